//! Measures the error store's `stats` against Redis with 100 and with 1,000,000 stored
//! entries: it reads counters, so the latency must not grow with the store.
//! `cargo bench --bench error_stats -- redis://127.0.0.1:PORT` (or with the URL in
//! `SCENEHOOK_BENCH_REDIS_URL`, as `scripts/bench --micro` runs it).

use std::time::{Duration, Instant};

use scenehook::store::{
    ErrorPolicy, ErrorStore, ErrorType, NewError, Severity,
    redis::{RedisErrorStore, connect},
};

const POLICY: ErrorPolicy = ErrorPolicy {
    success_ttl_ms: 5_000,
    info_ttl_ms: 600_000_000,
    warning_ttl_ms: 600_000_000,
    retention_ms: 86_400_000,
    max_entries: 2_000_000,
};

async fn fill(store: &RedisErrorStore, from: usize, to: usize) {
    let mut next = from;
    while next < to {
        let batch: Vec<_> = (next..to.min(next + 2000))
            .map(|i| {
                store.record(
                    NewError::new(Severity::Error, ErrorType::Processing, format!("entry {i}")),
                    1_764_400_000_000 + i as i64,
                )
            })
            .collect();
        next += batch.len();
        for r in futures::future::join_all(batch).await {
            r.expect("record");
        }
    }
}

async fn median_stats_latency(store: &RedisErrorStore) -> Duration {
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let started = Instant::now();
        store.stats(1_764_400_000_000).await.expect("stats");
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    let Some(url) = std::env::args()
        .skip(1)
        .find(|a| a.starts_with("redis"))
        .or_else(|| std::env::var("SCENEHOOK_BENCH_REDIS_URL").ok())
    else {
        // Not a failure: a plain `cargo bench` runs every bench target, this one included.
        eprintln!(
            "error_stats needs Redis: pass redis://HOST:PORT or set SCENEHOOK_BENCH_REDIS_URL; skipped"
        );
        return;
    };
    let client = connect(&url, Duration::from_secs(5))
        .await
        .expect("Redis answers");
    let store = RedisErrorStore::new(
        client,
        &format!("bench{}", scenehook::domain::ids::random_token(6)),
        POLICY,
    );
    fill(&store, 0, 100).await;
    let small = median_stats_latency(&store).await;
    let started = Instant::now();
    fill(&store, 100, 1_000_000).await;
    let filled = started.elapsed();
    let large = median_stats_latency(&store).await;
    let total = store.stats(1_764_400_000_000).await.expect("stats").total;
    println!(
        "stats median latency: {small:?} with 100 entries, {large:?} with {total} entries (filled in {filled:?})"
    );
}
