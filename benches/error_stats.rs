//! Measures the error store's `stats` against Redis with 100 and with 1,000,000 stored
//! entries (two stores, their calls alternating): it reads counters, so the latency must not
//! grow with the store.
//! `cargo bench --bench error_stats -- redis://127.0.0.1:PORT` (or with the URL in
//! `SCENEHOOK_BENCH_REDIS_URL`, as `scripts/bench --micro` runs it).

use std::time::{Duration, Instant};

use scenehook::store::{
    ErrorPolicy, ErrorStore, ErrorType, NewError, Severity,
    redis::{RedisErrorStore, connect},
};

/// The time the entries are recorded at and the stats asked for.
const NOW_MS: i64 = 1_764_400_000_000;

const POLICY: ErrorPolicy = ErrorPolicy {
    success_ttl_ms: 5_000,
    info_ttl_ms: 600_000_000,
    warning_ttl_ms: 600_000_000,
    retention_ms: 86_400_000,
    max_entries: 2_000_000,
    max_successes: 1_000,
};

async fn fill(store: &RedisErrorStore, from: usize, to: usize) {
    let mut next = from;
    while next < to {
        let batch: Vec<_> = (next..to.min(next + 2000))
            .map(|i| {
                store.record(
                    NewError::new(Severity::Error, ErrorType::Processing, format!("entry {i}")),
                    NOW_MS + i as i64,
                )
            })
            .collect();
        next += batch.len();
        for r in futures::future::join_all(batch).await {
            r.expect("record");
        }
    }
}

/// Median `stats` latency of each store, their calls alternating, so that whatever else the
/// machine is doing meanwhile weighs on both alike.
async fn median_stats_latencies(stores: [&RedisErrorStore; 2]) -> [Duration; 2] {
    let mut samples = [Vec::with_capacity(2000), Vec::with_capacity(2000)];
    for _ in 0..2000 {
        for (store, samples) in stores.iter().zip(samples.iter_mut()) {
            let started = Instant::now();
            store.stats(NOW_MS).await.expect("stats");
            samples.push(started.elapsed());
        }
    }
    samples.map(|mut s| {
        s.sort();
        s[s.len() / 2]
    })
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
    let client = connect(&url, Duration::from_secs(5), &Default::default())
        .await
        .expect("Redis answers");
    let run = scenehook::domain::ids::random_token(6);
    let small = RedisErrorStore::new(client.clone(), &format!("bench{run}small"), POLICY);
    let large = RedisErrorStore::new(client, &format!("bench{run}large"), POLICY);
    fill(&small, 0, 100).await;
    let started = Instant::now();
    fill(&large, 0, 1_000_000).await;
    let filled = started.elapsed();
    let [small_latency, large_latency] = median_stats_latencies([&small, &large]).await;
    let small_total = small.stats(NOW_MS).await.expect("stats").total;
    let large_total = large.stats(NOW_MS).await.expect("stats").total;
    println!(
        "stats median latency: {small_latency:?} with {small_total} entries, \
         {large_latency:?} with {large_total} entries (calls alternating; filled in {filled:?})"
    );
}
