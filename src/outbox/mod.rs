//! The durable outbox: jobs written with the state change that causes them, sent by a worker
//! lane per downstream service, each behind its own circuit breaker, concurrency limit and
//! timeouts, retried on a schedule, and dead-lettered after the last attempt.

pub mod breaker;
pub mod client;
pub mod jobs;
pub mod worker;

pub use jobs::{JobContext, JobStatus, Service};
