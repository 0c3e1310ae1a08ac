//! scenehook: a signed webhook gateway for a scene-by-scene AI video pipeline.
//!
//! [`app::Gateway::start`] builds one instance from a [`config::Config`]; `main` and the
//! integration tests start it the same way.

pub mod app;
pub mod config;
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

pub use app::{Gateway, build_app};
