//! The ceiling of the load benchmark: what one instance could do if a webhook cost only the
//! unavoidable work — verify the HMAC of the raw body, parse the JSON, answer 200 — and,
//! with `--redis URL`, also one sliding-window EVALSHA (through the gateway's own limiter).
//!
//! `ceiling serve 127.0.0.1:PORT [--redis redis://…]` (cargo bench passes `--bench`, ignored).
//! `ceiling sink 127.0.0.1:PORT`: an outbound service that accepts every call at once, for
//! measuring the outbox's sending rate.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use scenehook::{
    config::Secret,
    domain::webhook::{WebhookKind, parse_callback},
    signature::{SignatureHeaders, Verifier},
    store::{RateLimitStore, redis::RedisRateLimiter},
};
use serde_json::json;

struct Ceiling {
    verifier: Verifier,
    limiter: Option<RedisRateLimiter>,
}

async fn webhook(State(c): State<Arc<Ceiling>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if let Some(limiter) = &c.limiter {
        match limiter
            .hit(
                "video-complete:127.0.0.1",
                u32::MAX,
                Duration::from_secs(60),
            )
            .await
        {
            Ok(d) if d.allowed => {}
            _ => return StatusCode::TOO_MANY_REQUESTS,
        }
    }
    let signature = SignatureHeaders {
        hex_signature: headers
            .get("x-webhook-signature")
            .and_then(|v| v.to_str().ok()),
        ..Default::default()
    };
    if c.verifier.verify(&signature, &body, 0).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    match parse_callback(WebhookKind::VideoComplete, &body) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let address_after = |command: &str| {
        args.iter()
            .position(|a| a == command)
            .and_then(|i| args.get(i + 1))
            .map(|a| a.parse::<SocketAddr>().expect("a socket address"))
    };
    if let Some(addr) = address_after("sink") {
        let router = Router::new().fallback(|| async { Json(json!({"task_id": "sunk"})) });
        return serve(addr, router).await;
    }
    let Some(addr) = address_after("serve") else {
        eprintln!("usage: ceiling serve ADDR [--redis URL] [--secret SECRET] | ceiling sink ADDR");
        return;
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let secret =
        flag("--secret").unwrap_or_else(|| "bench-video-secret-0123456789abcdef0123".into());
    let limiter = match flag("--redis") {
        Some(url) => {
            let client =
                scenehook::store::redis::connect(&url, Duration::from_secs(1), &Default::default())
                    .await
                    .expect("Redis answers");
            Some(RedisRateLimiter::new(client, "ceiling"))
        }
        None => None,
    };
    let state = Arc::new(Ceiling {
        verifier: Verifier::new(&[Secret::new(secret)], 300),
        limiter,
    });
    let router = Router::new()
        .route("/api/webhooks/video-complete", post(webhook))
        .with_state(state);
    serve(addr, router).await
}

async fn serve(addr: SocketAddr, router: Router) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the port is free");
    axum::serve(listener, router)
        .await
        .expect("the server runs");
}
