//! Seeds the database for the load benchmark: `--count` scenes awaiting their video (see
//! `support/seed.rs`), and writes one correctly signed, distinct video-complete delivery per
//! scene, as `body<TAB>signature` lines for wrk's script, in random order (with `--awaiting
//! last-frame`, `--count` projects midway, and a last-frame-complete delivery for each, which
//! wrk's script sends given `last-frame-complete` after the file): real callbacks come
//! for scenes of many projects, whose rows lie apart, with task ids the video service chose.
//! Sent in the seeding's order, consecutive deliveries would update neighbouring rows and
//! insert neighbouring keys, sharing pages a real load does not share (docs/PERFORMANCE.md).
//!
//! `loadprep --database-url URL --count N --secret S --out FILE [--parts K] [--awaiting
//! video|last-frame]` writes FILE.0 …
//! FILE.K-1 when several load generators each need their own deliveries.

#[path = "support/seed.rs"]
mod seed;

use rand::seq::SliceRandom;
use scenehook::{config::Config, db, signature::sign_hex};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.is_empty() {
        // A plain `cargo bench` runs every bench target; this one is scripts/bench's tool.
        eprintln!("loadprep seeds the load benchmark (scripts/bench runs it): nothing to measure");
        return;
    }
    let (Some(url), Some(count), Some(secret), Some(out)) = (
        flag("--database-url"),
        flag("--count"),
        flag("--secret"),
        flag("--out"),
    ) else {
        eprintln!(
            "usage: loadprep --database-url URL --count N --secret S --out FILE [--parts K] \
             [--awaiting video|last-frame]"
        );
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("--count is a number");
    let parts: usize = flag("--parts")
        .map(|p| p.parse().expect("--parts is a number"))
        .unwrap_or(1);
    let awaiting = match flag("--awaiting").as_deref() {
        None | Some("video") => seed::Awaiting::Video,
        Some("last-frame") => seed::Awaiting::LastFrame,
        Some(other) => panic!("--awaiting is video or last-frame, not {other}"),
    };
    let mut config = Config::defaults();
    config.database_url = url;
    let db = db::connect(&config).await.expect("the database answers");
    db::migrate(&db).await.expect("migrations apply");
    let seeded = seed::seed(&db, count, awaiting).await;
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut rand::rng());
    let mut files: Vec<String> = vec![String::new(); parts];
    for (n, i) in order.into_iter().enumerate() {
        let body = seeded.delivery(i);
        let signature = sign_hex(&secret, body.as_bytes());
        let file = &mut files[n % parts];
        file.push_str(&body);
        file.push('\t');
        file.push_str(&signature);
        file.push('\n');
    }
    for (k, text) in files.iter().enumerate() {
        let path = if parts == 1 {
            out.clone()
        } else {
            format!("{out}.{k}")
        };
        std::fs::write(&path, text).expect("write the deliveries");
    }
    println!(
        "seeded {count} {} deliveries for {} projects",
        seeded.kind().as_str(),
        seeded.projects
    );
}
