//! The durable write alone, below HTTP: `ingest_batch` of 1, 8, 32 and 64 distinct
//! video-complete deliveries, then as many last-frame-complete ones (each verifies a scene
//! midway through its project and queues the next, or the stitch), on SQLite with the
//! gateway's own connection settings or, given a URL, on Postgres. A writer task runs its
//! batches one after the other, so a batch's time bounds how many webhooks per second one
//! writer commits. The deliveries come in random order, as the load benchmark sends them
//! (`loadprep.rs`), so that a batch shares no page its webhooks would not share in production.
//! `cargo bench --bench ingest [-- postgres://USER@HOST:PORT/DB]`

#[path = "support/seed.rs"]
mod seed;

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use scenehook::{
    config::Config,
    db::{
        self,
        ingest::{Admission, Batch, IngestDb, Submission, ingest_batch},
        pipeline::IngestOutcome,
    },
    domain::{
        Limits,
        webhook::{delivery_key, parse_callback},
    },
    outbox::JobContext,
};

const SIZES: [usize; 4] = [1, 8, 32, 64];
const BATCHES_PER_SIZE: usize = 200;
const LIMITS: Limits = Limits {
    max_scene_attempts: 3,
    max_extract_attempts: 3,
    max_stitch_attempts: 3,
};

fn batch(seeded: &seed::Seeded, deliveries: &[usize]) -> Batch {
    let mut batch = Batch::default();
    for &i in deliveries {
        let callback =
            parse_callback(seeded.kind(), seeded.delivery(i).as_bytes()).expect("a valid delivery");
        let submission = Submission {
            kind: seeded.kind().as_str(),
            key: delivery_key(None, &callback),
            callback,
            jobs: JobContext {
                app_url: "http://127.0.0.1:8080".into(),
                request_id: None,
            },
            admission: Admission::granted(),
        };
        batch.push(submission).expect("distinct deliveries");
    }
    batch
}

#[tokio::main]
async fn main() {
    let postgres = std::env::args().skip(1).find(|a| a.starts_with("postgres"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = Config::defaults();
    config.database_url = postgres
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/ingest.db?mode=rwc", dir.path().display()));
    let db = db::connect(&config).await.expect("the database answers");
    db::migrate(&db).await.expect("migrations apply");
    let needed = SIZES.iter().sum::<usize>() * BATCHES_PER_SIZE;
    let ingest_db = IngestDb::open(&db, &config)
        .await
        .expect("the database opens");
    let backend = if postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    for awaiting in [seed::Awaiting::Video, seed::Awaiting::LastFrame] {
        let seeded = seed::seed(&db, needed, awaiting).await;
        let kind = seeded.kind().as_str();
        let mut order: Vec<usize> = (0..needed).collect();
        order.shuffle(&mut rand::rng());
        let mut rest = &order[..];
        for size in SIZES {
            let (these, after) = rest.split_at(size * BATCHES_PER_SIZE);
            rest = after;
            let batches: Vec<Batch> = these.chunks(size).map(|d| batch(&seeded, d)).collect();
            let mut times: Vec<Duration> = Vec::with_capacity(batches.len());
            for batch in batches {
                let started = Instant::now();
                let outcomes = ingest_batch(&ingest_db, batch, &LIMITS)
                    .await
                    .expect("the batch commits");
                times.push(started.elapsed());
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, Ok(IngestOutcome::Accepted(_)))),
                    "every delivery is accepted"
                );
            }
            times.sort();
            let median = times[times.len() / 2];
            println!(
                "ingest_batch {backend:8} {kind:19} size {size:3}: median {:8.1} µs per batch, {:6.1} µs per webhook (p90 {:8.1} µs per batch)",
                median.as_secs_f64() * 1e6,
                median.as_secs_f64() * 1e6 / size as f64,
                times[times.len() * 9 / 10].as_secs_f64() * 1e6,
            );
        }
    }
}
