//! Records entries in the global error store without ever failing or slowing the caller.
//!
//! Reports wait in a queue that one background task ([`Reporter::run`]) writes in batches, one
//! store call for up to [`WRITE_BATCH`] entries: a success reported for every verified scene
//! costs Redis a share of one round trip a few times a second, not a round trip each. When the
//! store is down, entries stay queued (bounded, oldest dropped first and counted) and are
//! written once it answers again.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::store::{ErrorStore, ErrorType, NewError};

/// Entries of each queue kept while the store cannot take them; the oldest go first.
const QUEUE_CAP: usize = 1000;
/// Entries per store call. A script holds Redis alone while it runs, ~43 µs a success
/// (`benches/hot_path`, `error_store_redis_successes_32`): 32 keep each call within ~1.5 ms of
/// every instance's rate-limit decisions, at a round trip per 32 reports.
const WRITE_BATCH: usize = 32;
/// How long the writer lets reports gather after the first, so a burst is one call.
const LINGER: Duration = Duration::from_millis(100);
/// How long the writer waits after a failed write before trying again: one timeout per
/// second while the store is down, however many entries are reported.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ErrorStore>,
    queue: Mutex<Queue>,
    queued: Notify,
    throttle: Mutex<HashMap<String, Instant>>,
}

/// Entries waiting to be written, with their report times. Successes queue apart, so that a
/// stream of them can never push a queued error out.
#[derive(Default)]
struct Queue {
    problems: VecDeque<(NewError, i64)>,
    successes: VecDeque<(NewError, i64)>,
    /// Entries taken for the store call in progress (until the next `take` or `put_back`):
    /// not written yet either.
    in_flight: usize,
}

impl Queue {
    fn push(&mut self, entry: NewError, at: i64) {
        let queue = if entry.kind == ErrorType::Success {
            &mut self.successes
        } else {
            &mut self.problems
        };
        if queue.len() == QUEUE_CAP {
            queue.pop_front();
            metrics::counter!("scenehook_error_store_dropped_total").increment(1);
        }
        queue.push_back((entry, at));
    }

    /// Up to `WRITE_BATCH` entries, problems first, for one store call.
    fn take(&mut self) -> Vec<(NewError, i64)> {
        let from_problems = self.problems.len().min(WRITE_BATCH);
        let from_successes = self.successes.len().min(WRITE_BATCH - from_problems);
        self.in_flight = from_problems + from_successes;
        self.problems
            .drain(..from_problems)
            .chain(self.successes.drain(..from_successes))
            .collect()
    }

    /// Puts a batch that could not be written back in front of what was queued since.
    fn put_back(&mut self, batch: Vec<(NewError, i64)>) {
        self.in_flight = 0;
        let mut later = std::mem::take(self);
        for (entry, at) in batch {
            self.push(entry, at);
        }
        for (entry, at) in later.problems.drain(..).chain(later.successes.drain(..)) {
            self.push(entry, at);
        }
    }

    fn len(&self) -> usize {
        self.problems.len() + self.successes.len() + self.in_flight
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Reporter {
    pub fn new(store: Arc<dyn ErrorStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                queue: Mutex::default(),
                queued: Notify::new(),
                throttle: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn ErrorStore> {
        &self.inner.store
    }

    /// Queues `entry` for the writer, stamped now.
    pub fn report(&self, entry: NewError) {
        metrics::counter!(
            "scenehook_errors_recorded_total",
            "severity" => entry.severity.as_str(),
            "type" => entry.kind.as_str()
        )
        .increment(1);
        self.inner.queue.lock().push(entry, now_ms());
        self.inner.queued.notify_one();
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

    /// The writer: waits for reports, lets a burst gather, writes them; after a failure waits
    /// [`RETRY_AFTER`]. On stop it writes what is queued, once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        'run: loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = self.inner.queued.notified() => {}
            }
            let mut wait = LINGER;
            loop {
                tokio::select! {
                    _ = stop.changed() => break 'run,
                    _ = tokio::time::sleep(wait) => {}
                }
                if self.write_queued().await {
                    break;
                }
                wait = RETRY_AFTER;
            }
        }
        self.write_queued().await;
    }

    /// Writes the queue, a batch per store call, in order; stops at the first failure (the
    /// batch goes back in front). Returns whether the queue was written out.
    async fn write_queued(&self) -> bool {
        loop {
            let batch = self.inner.queue.lock().take();
            if batch.is_empty() {
                return true;
            }
            if let Err(e) = self.inner.store.record_many(&batch).await {
                metrics::counter!("scenehook_error_store_failures_total").increment(1);
                tracing::warn!(error = %e, queued = batch.len(), "error store unavailable, entries stay queued");
                self.inner.queue.lock().put_back(batch);
                return false;
            }
        }
    }

    /// Entries reported and not yet written.
    pub fn queued(&self) -> usize {
        self.inner.queue.lock().len()
    }
}
