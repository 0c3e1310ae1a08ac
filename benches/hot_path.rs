//! Micro-benchmarks of the webhook hot path: signature verification (both schemes, 1 KiB and
//! 64 KiB), payload parsing, the in-process rate-limit decision and error-store grouping.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use scenehook::{
    config::Secret,
    domain::webhook::{WebhookKind, parse_callback},
    signature::{SignatureHeaders, Verifier, sign_hex, sign_standard},
    store::{
        ErrorPolicy, ErrorStore, ErrorType, NewError, RateLimitStore, Severity,
        memory::{MemoryErrorStore, MemoryRateLimiter},
    },
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

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let limiter = MemoryRateLimiter::new();
    let mut n = 0u64;
    c.bench_function("rate_limit_memory", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("video-complete:10.0.{}.{}", (n >> 8) & 255, n & 255);
            rt.block_on(limiter.hit(&key, 100, Duration::from_secs(60)))
        })
    });
    let store = MemoryErrorStore::new(ErrorPolicy {
        success_ttl_ms: 5_000,
        info_ttl_ms: 60_000,
        warning_ttl_ms: 600_000,
        retention_ms: 86_400_000,
        max_entries: 10_000,
    });
    let mut t = 0i64;
    c.bench_function("error_store_memory_add_grouped", |b| {
        b.iter(|| {
            t += 1;
            rt.block_on(store.record(
                NewError::new(Severity::Error, ErrorType::Automation, "stitch down"),
                t,
            ))
        })
    });
}

criterion_group!(benches, signatures, parsing, stores);
criterion_main!(benches);
