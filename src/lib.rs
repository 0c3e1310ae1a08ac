//! scenehook: a signed webhook gateway for a scene-by-scene AI video pipeline.
//!
//! [`app::Gateway::start`] builds one instance from a [`config::Config`]; `main` and the
//! integration tests start it the same way.

pub mod app;
pub mod config;
pub mod credentials;
pub mod db;
pub mod domain;
pub mod error;
pub mod fakes;
pub mod http;
pub mod outbox;
pub mod ratelimit;
pub mod reporter;
pub mod signature;
pub mod store;
pub mod telemetry;
mod text_enum;
pub mod tls;

pub use app::{FileReloads, Gateway, build_app};

/// Installs rustls's process-wide crypto provider (ring), which reqwest and sqlx's TLS need
/// when more than one could be chosen; a second install is a no-op.
pub(crate) fn install_crypto_provider() {
    drop(rustls::crypto::ring::default_provider().install_default());
}
