//! The Postgres ingestion writers connect with their own driver (tokio-postgres); every other
//! connection goes through sqlx. One `DATABASE_URL` must mean the same to both: TLS and its
//! `sslmode`s, root and client certificates, passwords from the URL or the password file.
//! Checked against a Postgres of the test's own that takes TCP connections over TLS only,
//! with certificates made by `openssl` (`common::make_certificates`).

mod common;

use std::time::Duration;

use common::*;
use scenehook::db::ingest::PgWriter;
use sea_orm::{ConnectionTrait, Database};

fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn writer(url: &str) -> Result<PgWriter, String> {
    PgWriter::open(url, 1, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_read_tls_certificates_and_passwords_as_sqlx_does() {
    let Some(pg) = OwnPostgres::start("postgres_tls") else {
        return;
    };
    // As the gateway does before it connects: sqlx's verify-ca takes the process's provider.
    drop(rustls::crypto::ring::default_provider().install_default());
    let certs = tempfile::tempdir().unwrap();
    // The server certificate is for `localhost` only, not for 127.0.0.1.
    make_certificates(certs.path(), "DNS:localhost");
    let read = |name: &str| std::fs::read(certs.path().join(name)).unwrap();
    let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
    let admin = Database::connect(pg.url()).await.unwrap();
    admin
        .execute_unprepared(
            "CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'p@ss word:1'; \
             CREATE ROLE certuser LOGIN SUPERUSER",
        )
        .await
        .unwrap();
    scenehook::db::migrate(&admin).await.unwrap();
    drop(admin);
    let (server_pem, server_key, ca_pem) = (read("server.pem"), read("server.key"), read("ca.pem"));
    pg.configure(
        &[
            ("server.pem", &server_pem),
            ("server.key", &server_key),
            ("ca.pem", &ca_pem),
        ],
        "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
         ssl_ca_file = 'ca.pem'\n",
        // Over TCP, TLS or nothing: a writer that connected went through TLS.
        "local all all trust\n\
         hostssl all certuser 127.0.0.1/32 cert\n\
         hostssl all pwuser 127.0.0.1/32 scram-sha-256\n\
         hostssl all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 reject\n",
    );
    let at = |user: &str, host: &str, query: &str| {
        format!("postgres://{user}@{host}:{}/postgres?{query}", pg.port)
    };
    // The reload takes effect when the server gets to it.
    eventually(
        Duration::from_secs(10),
        "the server to take TLS",
        || async {
            writer(&at("postgres", "localhost", "sslmode=require"))
                .await
                .is_ok()
        },
    )
    .await;

    let ca = file("ca.pem");
    let accepted = [
        // The name the certificate was issued for, checked against the CA given.
        at(
            "postgres",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        // verify-ca checks the chain, not the name.
        at(
            "postgres",
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        // require and prefer encrypt without checking the certificate.
        at("postgres", "127.0.0.1", "sslmode=require"),
        at("postgres", "127.0.0.1", "sslmode=prefer"),
        // A password from the URL, percent-encoded there.
        at("pwuser:p%40ss%20word%3A1", "localhost", "sslmode=require"),
        // A client certificate instead of a password.
        at(
            "certuser",
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
                file("client.pem"),
                file("client.key")
            ),
        ),
    ];
    for url in &accepted {
        // Both drivers take it: sqlx (the gateway's pool) and the writers.
        Database::connect(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("sqlx refused {url}: {e}"));
        let writer = writer(url)
            .await
            .unwrap_or_else(|e| panic!("the writers refused {url}: {e}"));
        let client = writer.sessions().connect().await.unwrap();
        let encrypted: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(encrypted, "{url}");
    }

    // A Unix socket: TLS is for TCP only, and `prefer`, the default, goes without it there.
    let socket = format!(
        "postgres://postgres@{}:{}/postgres",
        percent_encode(pg.socket_dir()),
        pg.port
    );
    Database::connect(socket.as_str()).await.unwrap();
    writer(&socket)
        .await
        .unwrap_or_else(|e| panic!("the writers refused {socket}: {e}"));

    let stranger = file("stranger.pem");
    let refused = [
        // The certificate is for localhost, not for 127.0.0.1.
        at(
            "postgres",
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        // Signed by a CA other than the one trusted.
        at(
            "postgres",
            "localhost",
            &format!("sslmode=verify-ca&sslrootcert={stranger}"),
        ),
        // Without TLS the server refuses every TCP connection.
        at("postgres", "127.0.0.1", "sslmode=disable"),
        at("pwuser:wrong", "localhost", "sslmode=require"),
        at("pwuser", "localhost", "sslmode=require"),
        at(
            "certuser",
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
    ];
    for url in &refused {
        assert!(
            Database::connect(url.as_str()).await.is_err(),
            "sqlx took {url}"
        );
        let error = writer(url)
            .await
            .err()
            .unwrap_or_else(|| panic!("the writers took {url}"));
        assert!(
            !error.contains("p@ss") && !error.contains("wrong"),
            "{error}"
        );
    }

    // The password file, as sqlx reads it when the URL has no password.
    let passfile = certs.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("localhost:{}:*:pwuser:p@ss word\\:1\n", pg.port),
    )
    .unwrap();
    std::fs::set_permissions(
        &passfile,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // SAFETY: this binary's one test, and nothing else of it reads the environment now.
    unsafe { std::env::set_var("PGPASSFILE", &passfile) };
    let url = at("pwuser", "localhost", "sslmode=require");
    Database::connect(url.as_str()).await.unwrap();
    writer(&url)
        .await
        .unwrap_or_else(|e| panic!("the writers ignored the password file: {e}"));
}
