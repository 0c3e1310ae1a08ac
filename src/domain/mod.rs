//! The pipeline's rules: statuses, the transitions webhooks and operators may cause, and the
//! outbound work each transition asks for. Pure functions over plain values: no HTTP, no
//! database, no Redis, so every rule is tested alone.

pub mod ids;
pub mod pipeline;
pub mod webhook;

pub use pipeline::*;
