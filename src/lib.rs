//! scenehook: a signed webhook gateway for a scene-by-scene AI video pipeline.

pub mod config;
pub mod domain;
pub mod error;
pub mod signature;
pub mod store;
