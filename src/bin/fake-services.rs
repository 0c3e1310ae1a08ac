//! Plays the video, last-frame, stitch and notification services on loopback, calling the
//! gateway back with signed webhooks. `cargo run --bin fake-services` next to
//! `cargo run --release` makes a working pipeline on one machine with no configuration.
//! Listens on `FAKES_ADDR` (default 127.0.0.1:3100); signs with the same secrets the gateway
//! reads (`VIDEO_WEBHOOK_SECRET`, …, or the development defaults).

use std::time::Duration;

use scenehook::{
    config::{Config, Purpose},
    fakes::{FakeConfig, FakeServices},
};

#[tokio::main]
async fn main() {
    let config = match Config::load(Purpose::Serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let addr = std::env::var("FAKES_ADDR").unwrap_or_else(|_| "127.0.0.1:3100".into());
    let delay_ms = std::env::var("FAKES_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let addr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("FAKES_ADDR `{addr}` is not a socket address");
            std::process::exit(2);
        }
    };
    let fakes = match FakeServices::start(
        FakeConfig::for_gateway(&config, Duration::from_millis(delay_ms)),
        addr,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("fake services listening on {}", fakes.url());
    let _ = tokio::signal::ctrl_c().await;
}
