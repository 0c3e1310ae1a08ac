//! HTTPS on `bind_addr` (`tls.cert_file`, `tls.key_file`): webhooks are served over TLS only,
//! a renewed certificate is served without a restart, a renewal that cannot be used leaves the
//! current one in service, and a certificate that cannot be used stops the start.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use scenehook::config::Config;

/// `make_certificates`'s set for 127.0.0.1 in a directory of its own.
fn certificates() -> tempfile::TempDir {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path(), "IP:127.0.0.1");
    certs
}

async fn https_config(test: &str, certs: &Path) -> Config {
    let mut cfg = config(Backend::Embedded, test).await.unwrap();
    cfg.tls.cert_file = Some(certs.join("server.pem"));
    cfg.tls.key_file = Some(certs.join("server.key"));
    cfg.tls.reload_secs = 1;
    cfg
}

/// A video callback for an unknown project through `http`: 404 once it reached the handler.
async fn webhook_status(http: &reqwest::Client, app: &TestApp) -> Result<u16, reqwest::Error> {
    app.webhook_via(http, "video-complete", VIDEO_SECRET, UNKNOWN_PROJECT_VIDEO)
        .await
        .map(|r| r.status().as_u16())
}

/// Waits up to 10 s for `http` (trusting one CA) to reach the webhook handler: `what`.
async fn served_soon(http: &reqwest::Client, app: &TestApp, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        webhook_status(http, app).await.is_ok_and(|s| s == 404)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_served_over_https_only() {
    let certs = certificates();
    let app = TestApp::start_with(https_config("https", certs.path()).await, false).await;
    assert!(app.url.starts_with("https://"));

    assert_eq!(webhook_status(&app.http, &app).await.unwrap(), 404);
    assert_eq!(app.readiness().await.0, 200);
    // HTTP/2 too, for a client that asks for it in the handshake (ALPN).
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.path().join("ca.pem")).unwrap())
        .unwrap();
    let h2 = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let response = app
        .webhook_via(&h2, "video-complete", VIDEO_SECRET, UNKNOWN_PROJECT_VIDEO)
        .await
        .unwrap();
    assert_eq!(
        (response.version(), response.status().as_u16()),
        (reqwest::Version::HTTP_2, 404)
    );

    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", app.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let stranger = https_client(&certs.path().join("stranger.pem"));
    assert!(
        webhook_status(&stranger, &app).await.is_err(),
        "a client that trusts another CA connected"
    );

    // The certificate's expiry (two days from now, as `make_certificates` makes it), and every
    // HTTPS metric the alerts and the dashboard use, are exported.
    let scrape = app.scrape().await;
    let expiry = sample(
        &scrape,
        "scenehook_tls_certificate_expiry_timestamp_seconds",
        &[],
    )
    .expect("the expiry is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 86_400.0..now + 3.0 * 86_400.0).contains(&expiry),
        "{expiry} against {now}"
    );
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/scenehook.json",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let https_metrics: Vec<String> = referenced_metrics(&text)
            .into_iter()
            .filter(|n| n.starts_with("scenehook_tls_"))
            .collect();
        assert_eq!(https_metrics.len(), 2, "{file}: {https_metrics:?}");
        for name in https_metrics {
            assert!(
                scrape.contains(&format!("\n{name}")),
                "{file} uses {name}, which is not exported"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let certs = certificates();
    let app = TestApp::start_with(https_config("https_renewal", certs.path()).await, false).await;
    let first_ca = https_client(&certs.path().join("ca.pem"));
    assert_eq!(webhook_status(&first_ca, &app).await.unwrap(), 404);
    let reloads = |scrape: &str, result: &str| {
        sample(
            scrape,
            "scenehook_tls_certificate_reloads_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    };
    let before = app.scrape().await;

    // A renewal by another CA, each file replaced whole, as certbot and cert-manager do.
    let renewal = certificates();
    for file in ["server.pem", "server.key"] {
        let staged = certs.path().join(format!("{file}.new"));
        std::fs::copy(renewal.path().join(file), &staged).unwrap();
        std::fs::rename(&staged, certs.path().join(file)).unwrap();
    }
    let second_ca = https_client(&renewal.path().join("ca.pem"));
    served_soon(&second_ca, &app, "the renewed certificate is served").await;
    // A client of its own: one that connected before resumes its TLS session, with no
    // certificate sent.
    let first_ca_anew = https_client(&certs.path().join("ca.pem"));
    assert!(
        webhook_status(&first_ca_anew, &app).await.is_err(),
        "the old certificate is still served"
    );
    let renewed = app.scrape().await;
    assert_eq!(
        reloads(&renewed, "renewed") - reloads(&before, "renewed"),
        1.0
    );

    // A renewal that cannot be used (the key of another certificate): the current one stays.
    std::fs::copy(
        certs.path().join("client.key"),
        certs.path().join("server.key"),
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the unusable renewal is counted",
        || async { reloads(&app.scrape().await, "failed") > reloads(&renewed, "failed") },
    )
    .await;
    assert_eq!(webhook_status(&second_ca, &app).await.unwrap(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_cannot_be_served_stops_the_start() {
    let certs = certificates();
    let cases = [
        (
            "a key that is not the certificate's",
            "server.pem",
            "client.key",
            "do not make a pair",
        ),
        ("a missing file", "server.pem", "absent.key", "cannot read"),
        (
            "no certificate",
            "server.key",
            "server.key",
            "no certificate",
        ),
    ];
    for (case, cert, key, why) in cases {
        let mut cfg = https_config("https_refused", certs.path()).await;
        cfg.tls.cert_file = Some(certs.path().join(cert));
        cfg.tls.key_file = Some(certs.path().join(key));
        let error = start_error(cfg, case).await;
        assert!(
            error.starts_with("tls: ") && error.contains(why),
            "{case}: {error}"
        );
    }
}

/// A renewal is read at once when asked ([`scenehook::FileReloads`], which SIGHUP uses), long
/// before the next scheduled check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_read_at_once_when_asked() {
    let certs = certificates();
    let mut cfg = https_config("https_asked", certs.path()).await;
    cfg.tls.reload_secs = 3600;
    let app = TestApp::start_with(cfg, false).await;
    let renewal = certificates();
    for file in ["server.pem", "server.key"] {
        std::fs::copy(renewal.path().join(file), certs.path().join(file)).unwrap();
    }
    let second_ca = https_client(&renewal.path().join("ca.pem"));
    assert!(webhook_status(&second_ca, &app).await.is_err());
    app.gateway.file_reloads().request();
    served_soon(
        &second_ca,
        &app,
        "the renewed certificate is served once asked",
    )
    .await;
}
