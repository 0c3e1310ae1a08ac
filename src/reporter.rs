//! Records entries in the global error store without ever failing or slowing the caller:
//! writes happen in the background; when the store is down, entries wait in a small bounded
//! buffer and are flushed once it answers again.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::store::{ErrorStore, NewError};

/// Entries kept while the store is unreachable; older ones are dropped first (and counted).
const BUFFER_CAP: usize = 1000;

#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ErrorStore>,
    buffer: Mutex<VecDeque<(NewError, i64)>>,
    throttle: Mutex<HashMap<String, Instant>>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Reporter {
    pub fn new(store: Arc<dyn ErrorStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                buffer: Mutex::new(VecDeque::new()),
                throttle: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn ErrorStore> {
        &self.inner.store
    }

    /// Records in the background.
    pub fn report(&self, entry: NewError) {
        metrics::counter!(
            "scenehook_errors_recorded_total",
            "severity" => entry.severity.as_str(),
            "type" => entry.kind.as_str()
        )
        .increment(1);
        let inner = self.inner.clone();
        let at = now_ms();
        tokio::spawn(async move { inner.write(entry, at).await });
    }

    /// Records at most once per `interval` for `key` on this instance, so a flood (of forged
    /// signatures, say) costs the store one write per interval; the metric still counts all.
    pub fn report_throttled(&self, key: &str, interval: Duration, entry: NewError) {
        {
            let mut last = self.inner.throttle.lock();
            let now = Instant::now();
            if last
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < interval)
            {
                return;
            }
            if last.len() > 10_000 {
                last.retain(|_, t| now.duration_since(*t) < interval);
            }
            last.insert(key.to_owned(), now);
        }
        self.report(entry);
    }

    /// Writes buffered entries oldest first, stopping at the first failure (the store is
    /// still down: one timeout per tick, not one per entry). The housekeeping task calls it.
    pub async fn flush(&self) {
        loop {
            let Some((entry, at)) = self.inner.buffer.lock().front().cloned() else {
                return;
            };
            if self.inner.store.record(entry, at).await.is_err() {
                return;
            }
            self.inner.buffer.lock().pop_front();
        }
    }

    pub fn buffered(&self) -> usize {
        self.inner.buffer.lock().len()
    }
}

impl Inner {
    async fn write(&self, entry: NewError, at: i64) {
        if let Err(e) = self.store.record(entry.clone(), at).await {
            metrics::counter!("scenehook_error_store_failures_total").increment(1);
            tracing::warn!(error = %e, message = %entry.message, "error store unavailable, buffering entry");
            let mut buffer = self.buffer.lock();
            if buffer.len() == BUFFER_CAP {
                buffer.pop_front();
                metrics::counter!("scenehook_error_store_dropped_total").increment(1);
            }
            buffer.push_back((entry, at));
        }
    }
}
