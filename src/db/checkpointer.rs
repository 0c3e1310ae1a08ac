//! SQLite's WAL checkpoints, on a thread and connection of their own.
//!
//! Left to SQLite, the commit that crosses `wal_autocheckpoint` pages copies the WAL into the
//! database file and fsyncs both before it returns, and with one writer every queued webhook
//! waits for that copy. Here every gateway connection has automatic checkpoints off, and this
//! thread copies whatever has been committed while the writer goes on (PASSIVE checkpoints
//! take no lock a writer needs). A passive checkpoint never lets the WAL start over while
//! writes keep coming, so once it holds `restart_frames` frames a RESTART checkpoint copies
//! the few frames committed since the last pass and makes the next transaction write from the
//! start of the file again: the writer waits only for that tail (docs/performance-log.md,
//! *Checkpoints: what was tried, what was kept*).
//!
//! The restart also syncs the database file before the WAL is written over, and SQLite syncs
//! that file only in a pass that reaches the WAL's end, which under continuous writes only the
//! restart does: its sync would carry every page copied since the previous restart, on a disk
//! the copies keep busy, while new transactions wait (50-250 ms measured). So this thread syncs
//! the database file itself, beside the writer, from three quarters of the bound and in a few
//! rounds before the restart, which then carries about one round's pages. While those rounds
//! run, the writer paces its commits ([`Checkpointer::catching_up`]), so that each round has
//! fewer pages to write back than the one before (docs/PERFORMANCE.md, *What bounds it*).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use sea_orm::DbErr;

/// How long a RESTART checkpoint may wait for the writer's transaction and for readers to
/// leave the WAL. New write transactions wait while it does, so it gives up early and is tried
/// again after a backoff ([`RESTART_BACKOFF_MIN`]).
const RESTART_PATIENCE: Duration = Duration::from_millis(20);

/// After a RESTART that a reader kept waiting, the next waits at least this long, then twice
/// as long after each that is kept waiting again, up to [`RESTART_BACKOFF_MAX`]: each attempt
/// holds new write transactions for up to [`RESTART_PATIENCE`], and a long read (a backup)
/// would otherwise have every pass do that, halving ingestion for as long as it reads.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most one pass per this long. Every pass that copies anything pays the same first (a
/// sync of the WAL, a sort of its current segment's frame index), and it copies a page once
/// however many of its frames it finds: under load, 30 ms passes copy 2.0 pages a webhook
/// where 3 ms ones copied 2.7, and the thread spends ~40 % less (docs/performance-log.md,
/// *Checkpoint passes 30 ms apart*). The restart's hold does not grow with the gap: the rounds
/// before a restart run back to back. The WAL may pass its bound by up to a gap's commits.
const PASS_GAP: Duration = Duration::from_millis(30);

/// Checkpoints at least this often, to cover the commits of connections that do not report
/// to it (the outbox and the API).
const IDLE_PASS: Duration = Duration::from_secs(1);

/// The checkpoint thread's nice value (0 is the default, 19 the lowest priority). Copying the
/// WAL has no deadline but the WAL's bound, while the writer it runs beside holds every queued
/// webhook: on cores that are busy, the writer and the request threads go first. 10 rather
/// than 19 or `SCHED_IDLE`, so that passes still keep up under sustained load; measured in
/// docs/performance-log.md (*The checkpointer gives way*).
#[cfg(target_os = "linux")]
const NICE: i32 = 10;

/// The share of `restart_frames` at which the thread first syncs the database file ahead of
/// the restart: early enough that the rounds before the restart start from a quarter of the
/// cycle's pages rather than all of them.
const SYNC_AHEAD_FROM: (i64, i64) = (3, 4);

/// Rounds of a sync and a pass before a restart. Each copies what was committed during the
/// round before it; under heavy writes they do not get shorter than the disk allows, so the
/// rounds are bounded, and the WAL passes its bound meanwhile by the rounds' commits.
const CATCH_UP_ROUNDS: u32 = 4;

/// A round that took less than this has caught up: the restart's own syncs will be as short.
const CAUGHT_UP: Duration = Duration::from_millis(5);

/// The thread's name (`top -H`, `/proc/PID/task/*/comm`, which keep its first 15 bytes).
const THREAD_NAME: &str = "scenehook-checkpoint";

/// Owns the checkpoint thread; dropping it stops the thread.
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    catching_up: AtomicBool,
}

#[derive(Default)]
struct State {
    committed: bool,
    stop: bool,
}

/// What one checkpoint call reported.
#[derive(Debug, Clone, Copy)]
struct Pass {
    busy: bool,
    wal_frames: i64,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Checkpoint(#[from] rusqlite::Error),
    #[error("syncing the database file: {0}")]
    Sync(#[from] std::io::Error),
}

impl Checkpointer {
    /// Opens its connection to the database file at `path` and starts checkpointing it,
    /// restarting the WAL once it reaches `wal_max_bytes`.
    pub fn start(path: &str, wal_max_bytes: u64) -> Result<Self, DbErr> {
        let failed = |e: &dyn std::fmt::Display| DbErr::Custom(format!("SQLite checkpointer: {e}"));
        let connection = Connection::open(path).map_err(|e| failed(&e))?;
        let page_size: i64 = connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .and_then(|()| connection.busy_handler(Some(restart_may_wait)))
            .and_then(|()| connection.pragma_query_value(None, "page_size", |row| row.get(0)))
            .map_err(|e| failed(&e))?;
        // A WAL frame is a page and its 24-byte header.
        let frame_bytes = page_size + 24;
        let restart_frames = (wal_max_bytes as i64 / frame_bytes).max(1);
        // Only to sync it: fdatasync takes any descriptor of the file.
        let database = std::fs::File::open(path).map_err(|e| failed(&e))?;
        metrics::gauge!("scenehook_sqlite_wal_limit_bytes").set(wal_max_bytes as f64);
        // Registered now, so that dashboards and alerts see them before the first restart.
        drop(metrics::histogram!("scenehook_sqlite_wal_restart_seconds"));
        drop(metrics::histogram!("scenehook_sqlite_sync_ahead_seconds"));
        metrics::counter!("scenehook_sqlite_wal_restart_busy_total").increment(0);
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn({
                let shared = shared.clone();
                move || {
                    lower_priority();
                    run(&connection, &database, &shared, restart_frames, frame_bytes)
                }
            })
            .map_err(|e| failed(&e))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether the thread is in the rounds before a restart, syncing the database file and
    /// copying what was committed meanwhile. Under heavy writes a round's commits dirty about
    /// as many pages as its sync writes back, and the rounds do not get shorter; a writer that
    /// slows down meanwhile lets them, and the restart then holds commits for less.
    pub fn catching_up(&self) -> bool {
        self.shared.catching_up.load(Ordering::Relaxed)
    }

    /// Tells the thread that a transaction committed frames to copy.
    pub fn committed(&self) {
        self.shared.state.lock().committed = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    connection: &Connection,
    database: &std::fs::File,
    shared: &Shared,
    restart_frames: i64,
    frame_bytes: i64,
) {
    let (share, of) = SYNC_AHEAD_FROM;
    let bounds = Bounds {
        sync_ahead_frames: restart_frames * share / of,
        restart_frames,
    };
    let mut synced_ahead = false;
    let mut backoff = RestartBackoff::default();
    let mut failing = false;
    let mut last_pass = Instant::now();
    loop {
        if let Some(wait) = PASS_GAP.checked_sub(last_pass.elapsed()) {
            std::thread::sleep(wait);
        }
        last_pass = Instant::now();
        {
            let mut state = shared.state.lock();
            if !state.committed && !state.stop {
                shared.wake.wait_for(&mut state, IDLE_PASS);
            }
            if state.stop {
                // The connection's close checkpoints what is left if it is the last one.
                return;
            }
            state.committed = false;
        }
        match run_pass(
            connection,
            database,
            &bounds,
            &mut synced_ahead,
            &mut backoff,
            shared,
        ) {
            Ok(pass) => {
                // -1: another connection's checkpoint held the lock (none in the gateway).
                if pass.wal_frames >= 0 {
                    metrics::gauge!("scenehook_sqlite_wal_bytes")
                        .set((pass.wal_frames * frame_bytes) as f64);
                }
                if failing {
                    tracing::info!("SQLite checkpoints work again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "SQLite checkpoint failed; retrying");
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The WAL sizes, in frames, at which a pass syncs the database file ahead and restarts.
struct Bounds {
    sync_ahead_frames: i64,
    restart_frames: i64,
}

/// When the next RESTART may be tried ([`RESTART_BACKOFF_MIN`]).
#[derive(Default)]
struct RestartBackoff {
    not_before: Option<Instant>,
    delay: Duration,
}

impl RestartBackoff {
    fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    fn record(&mut self, busy: bool, now: Instant) {
        if busy {
            self.delay = (self.delay * 2).clamp(RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX);
            self.not_before = Some(now + self.delay);
        } else {
            *self = Self::default();
        }
    }
}

/// One passive pass; from [`SYNC_AHEAD_FROM`] of the bound, a sync of the database file once
/// per cycle; at the bound, the rounds that catch up and the RESTART, unless one was kept
/// waiting lately ([`RestartBackoff`]).
fn run_pass(
    connection: &Connection,
    database: &std::fs::File,
    bounds: &Bounds,
    synced_ahead: &mut bool,
    backoff: &mut RestartBackoff,
    shared: &Shared,
) -> Result<Pass, Failure> {
    let pass = checkpoint(connection, "PASSIVE")?;
    // Fewer frames than when it synced ahead: the WAL has started over since.
    if pass.wal_frames < bounds.sync_ahead_frames {
        *synced_ahead = false;
    } else if !*synced_ahead {
        sync(database)?;
        *synced_ahead = true;
    }
    if pass.wal_frames >= bounds.restart_frames && backoff.due(Instant::now()) {
        shared.catching_up.store(true, Ordering::Relaxed);
        let caught_up = catch_up(connection, database);
        shared.catching_up.store(false, Ordering::Relaxed);
        caught_up?;
        let started = Instant::now();
        let restart = checkpoint(connection, "RESTART")?;
        metrics::histogram!("scenehook_sqlite_wal_restart_seconds")
            .record(started.elapsed().as_secs_f64());
        if restart.busy {
            metrics::counter!("scenehook_sqlite_wal_restart_busy_total").increment(1);
        }
        backoff.record(restart.busy, Instant::now());
    }
    Ok(pass)
}

/// Gives the calling thread the nice value [`NICE`]. Where that fails, the thread keeps its
/// priority: only throughput depends on it, not correctness.
#[cfg(target_os = "linux")]
fn lower_priority() {
    use rustix::process::{getpriority_process, setpriority_process};
    // Linux keeps a nice value per thread; a thread's id addresses that thread alone. A
    // gateway started with a lower priority still is not raised.
    let thread = Some(rustix::thread::gettid());
    if let Err(e) =
        getpriority_process(thread).and_then(|nice| setpriority_process(thread, nice.max(NICE)))
    {
        tracing::debug!(error = %e, "the SQLite checkpointer keeps its priority");
    }
}

/// Elsewhere the thread keeps the default priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Syncs the database file and copies what was committed meanwhile, until a round is short
/// or [`CATCH_UP_ROUNDS`] have run.
fn catch_up(connection: &Connection, database: &std::fs::File) -> Result<(), Failure> {
    for _ in 0..CATCH_UP_ROUNDS {
        let started = Instant::now();
        sync(database)?;
        checkpoint(connection, "PASSIVE")?;
        if started.elapsed() < CAUGHT_UP {
            break;
        }
    }
    Ok(())
}

/// Writes the database file's copied pages to disk; commits go on meanwhile.
fn sync(database: &std::fs::File) -> std::io::Result<()> {
    let started = Instant::now();
    database.sync_data()?;
    metrics::histogram!("scenehook_sqlite_sync_ahead_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

fn checkpoint(connection: &Connection, mode: &str) -> rusqlite::Result<Pass> {
    connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok(Pass {
            busy: row.get::<_, i64>(0)? != 0,
            wal_frames: row.get(1)?,
        })
    })
}

/// The checkpoint connection's busy handler (only RESTART waits): polls every 50 µs, up to
/// [`RESTART_PATIENCE`].
fn restart_may_wait(attempts: i32) -> bool {
    const POLL: Duration = Duration::from_micros(50);
    std::thread::sleep(POLL);
    (attempts as u128) < RESTART_PATIENCE.as_micros() / POLL.as_micros()
}

/// A busy handler for writers that may wait behind a RESTART checkpoint: polls every 50 µs
/// for the first 10 ms (longer than most restarts take: 2-9 ms on average under load), then
/// every millisecond, up to about 5 s in all. SQLite's own busy timeout backs off to sleeps of
/// up to 100 ms, which a queue of webhooks then waits out whole.
pub fn writer_may_wait(attempts: i32) -> bool {
    const FINE: i32 = 200;
    if attempts < FINE {
        std::thread::sleep(Duration::from_micros(50));
    } else {
        std::thread::sleep(Duration::from_millis(1));
    }
    attempts < FINE + 4_990
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of every thread of this process named as the checkpointer is.
    fn checkpointer_nice_values() -> Vec<i32> {
        let mut values = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim_end() != &THREAD_NAME[..15] {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
                values.push(nice_of(&stat));
            }
        }
        values
    }

    /// A thread's nice value from its `stat`: field 19, counting from the pid, after the name,
    /// which ends at the last ')'.
    fn nice_of(stat: &str) -> i32 {
        let (_, fields) = stat.rsplit_once(')').unwrap();
        fields.split_whitespace().nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn restarts_kept_waiting_back_off_until_one_succeeds() {
        let start = Instant::now();
        let mut backoff = RestartBackoff::default();
        assert!(backoff.due(start));
        let mut delays = Vec::new();
        let mut now = start;
        for _ in 0..7 {
            backoff.record(true, now);
            assert!(!backoff.due(now));
            let at = backoff.not_before.unwrap();
            assert!(backoff.due(at));
            delays.push(at - now);
            now = at;
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        backoff.record(false, now);
        assert!(backoff.due(now));
        backoff.record(true, now);
        assert_eq!(backoff.not_before, Some(now + ms(50)));
    }

    #[test]
    fn the_checkpointer_runs_below_the_writers_priority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nice.db");
        let path = path.to_str().unwrap();
        Connection::open(path)
            .unwrap()
            .pragma_update(None, "journal_mode", "WAL")
            .unwrap();
        let expected = NICE.max(nice_of(
            &std::fs::read_to_string("/proc/thread-self/stat").unwrap(),
        ));
        let _checkpointer = Checkpointer::start(path, 1 << 20).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let values = checkpointer_nice_values();
            if !values.is_empty() && values.iter().all(|&nice| nice == expected) {
                break;
            }
            assert!(Instant::now() < deadline, "nice values: {values:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
