//! Micro-benchmarks of the webhook hot path: signature verification (both schemes, 1 KiB and
//! 64 KiB), payload parsing, the rate-limit decision and error-store grouping, in process and,
//! given `SCENEHOOK_BENCH_REDIS_URL`, on Redis.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use scenehook::{
    config::Secret,
    domain::{
        ids::random_token,
        webhook::{WebhookKind, parse_callback},
    },
    signature::{SignatureHeaders, Verifier, sign_hex, sign_standard},
    store::{
        ErrorPolicy, ErrorStore, ErrorType, NewError, RateLimitStore, Severity,
        memory::{MemoryErrorStore, MemoryRateLimiter},
        redis::{self, RedisErrorStore, RedisRateLimiter},
    },
};

/// Where the Redis backends are measured; unset, only the in-process ones are.
const REDIS_URL_VAR: &str = "SCENEHOOK_BENCH_REDIS_URL";

const POLICY: ErrorPolicy = ErrorPolicy {
    success_ttl_ms: 5_000,
    info_ttl_ms: 60_000,
    warning_ttl_ms: 600_000,
    retention_ms: 86_400_000,
    max_entries: 10_000,
    max_successes: 1_000,
};

const SEED: &str = r#"{"task_id":"test_123","status":"completed","scene_id":"scene_001","project_id":"proj_test","video_url":"https://example.com/test.mp4","timestamp":"2025-10-04T10:30:00.000Z"}"#;

fn signatures(c: &mut Criterion) {
    let secret = "bench-secret-0123456789abcdef0123456789";
    let verifier = Verifier::new(&[Secret::new(secret)], 300);
    for size in [1024usize, 64 * 1024] {
        let body = vec![b'x'; size];
        let hex = sign_hex(secret, &body);
        c.bench_function(&format!("verify_hex_{}k", size / 1024), |b| {
            let headers = SignatureHeaders {
                hex_signature: Some(&hex),
                ..Default::default()
            };
            b.iter(|| verifier.verify(black_box(&headers), black_box(&body), 0))
        });
        let now = 1_700_000_000;
        let std_sig = sign_standard(secret, "msg_1", now, &body);
        let ts = now.to_string();
        c.bench_function(&format!("verify_standard_{}k", size / 1024), |b| {
            let headers = SignatureHeaders {
                webhook_id: Some("msg_1"),
                webhook_timestamp: Some(&ts),
                webhook_signature: Some(&std_sig),
                hex_signature: None,
            };
            b.iter(|| verifier.verify(black_box(&headers), black_box(&body), now))
        });
    }
}

fn parsing(c: &mut Criterion) {
    c.bench_function("parse_video_complete", |b| {
        b.iter(|| parse_callback(WebhookKind::VideoComplete, black_box(SEED.as_bytes())))
    });
}

/// The same measurements for every backend: the rate-limit decision (one client address of
/// 65,536 per call) and an error recorded into an existing group.
fn store_benches(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    backend: &str,
    limiter: &dyn RateLimitStore,
    errors: &dyn ErrorStore,
) {
    let mut n = 0u64;
    c.bench_function(&format!("rate_limit_{backend}"), |b| {
        b.iter(|| {
            n += 1;
            let key = format!("video-complete:10.0.{}.{}", (n >> 8) & 255, n & 255);
            rt.block_on(limiter.hit(&key, 100, Duration::from_secs(60)))
        })
    });
    let mut t = 0i64;
    c.bench_function(&format!("error_store_{backend}_add_grouped"), |b| {
        b.iter(|| {
            t += 1;
            rt.block_on(errors.record(
                NewError::new(Severity::Error, ErrorType::Automation, "stitch down"),
                1_764_400_000_000 + t,
            ))
        })
    });
    // What last-frame callbacks cost the store: a success each, distinct, written 32 to a call
    // as the reporter writes them; in steady state each one also auto-dismisses an older
    // success and evicts one past the successes' cap. Time per call of 32.
    let mut scene = 0i64;
    c.bench_function(&format!("error_store_{backend}_successes_32"), |b| {
        b.iter(|| {
            let batch: Vec<_> = (0..32)
                .map(|_| {
                    scene += 1;
                    (
                        NewError::success(format!("Scene {scene} verified")),
                        1_764_400_000_000 + scene,
                    )
                })
                .collect();
            rt.block_on(errors.record_many(&batch))
        })
    });
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    store_benches(
        c,
        &rt,
        "memory",
        &MemoryRateLimiter::new(),
        &MemoryErrorStore::new(POLICY),
    );
    // Redis's backends against a server of the caller's (`scripts/bench --micro` starts one).
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) => {
            let client = rt
                .block_on(redis::connect(
                    &url,
                    Duration::from_secs(5),
                    &Default::default(),
                ))
                .expect("Redis answers");
            // A prefix of this run's own, so that earlier runs' keys do not count.
            let prefix = format!("bench{}", random_token(6));
            store_benches(
                c,
                &rt,
                "redis",
                &RedisRateLimiter::new(client.clone(), &prefix),
                &RedisErrorStore::new(client, &prefix, POLICY),
            );
        }
        Err(_) => eprintln!("{REDIS_URL_VAR} is not set: the Redis backends are not measured"),
    }
}

criterion_group!(benches, signatures, parsing, stores);
criterion_main!(benches);
