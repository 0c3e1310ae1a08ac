//! Shared state that must agree across every instance: the sliding-window rate limits and the
//! global error store. One trait per concern, two backends each: `memory` (one instance, the
//! embedded default) and `redis` (the fleet, Redis or Redis Cluster). One contract test suite
//! (`tests/store_contract.rs`) runs against both.

pub mod errors;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use errors::*;

/// A failure of the backing store (Redis unreachable, timed out, or answering nonsense).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// One rate-limit decision and the state to report in response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Milliseconds until the oldest counted request leaves the window.
    pub reset_ms: u64,
}

/// A sliding-window log: at most `limit` requests per key in any `window`.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Counts one request for `key` if the window has room, and decides.
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Result<RateDecision, StoreError>;
    /// `memory` or `redis`, for metrics.
    fn backend(&self) -> &'static str;
}

/// The global error store: grouped, dismissable operator-facing entries.
#[async_trait]
pub trait ErrorStore: Send + Sync {
    /// Records an entry, or counts it again on the active entry with the same fingerprint
    /// (reopening it when it was dismissed).
    async fn record(&self, entry: NewError, now_ms: i64) -> Result<ErrorEntry, StoreError>;
    /// Records each `(entry, at)` in order, in one call: one round trip for a batch of
    /// reports. As [`record`](Self::record) one after the other would, except that due entries
    /// are dismissed once, at the batch's earliest time, and the caps apply once, after its
    /// last entry (so an entry its own batch evicts and then reports again is counted again
    /// rather than started anew).
    async fn record_many(&self, entries: &[(NewError, i64)]) -> Result<(), StoreError>;
    async fn get(&self, id: &str, now_ms: i64) -> Result<Option<ErrorEntry>, StoreError>;
    async fn list(&self, query: &ListQuery, now_ms: i64) -> Result<ErrorPage, StoreError>;
    async fn dismiss(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<DismissOutcome, StoreError>;
    /// Dismisses every active dismissible entry; returns their ids.
    async fn dismiss_all(
        &self,
        by: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
    async fn stats(&self, now_ms: i64) -> Result<ErrorStats, StoreError>;
    /// Removes dismissed entries older than the retention; returns how many.
    async fn cleanup(&self, now_ms: i64) -> Result<u64, StoreError>;
    fn backend(&self) -> &'static str;
}
