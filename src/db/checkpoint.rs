//! WAL checkpoints for the embedded SQLite database, off the commit path.
//!
//! SQLite's own automatic checkpoint runs inside the commit that crosses its threshold: that
//! commit copies the WAL into the database file and syncs it while every webhook of its batch
//! (and, with one writer, every webhook queued behind it) waits. Here a task with a connection
//! of its own checkpoints every `sqlite_checkpoint_interval_ms` instead; a passive checkpoint
//! never waits for the writer nor makes it wait. The writer keeps an automatic checkpoint at
//! [`BACKSTOP_PAGES`] only as a bound on the WAL should this task fall behind.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement};
use tokio::sync::watch;

/// The writer's own automatic checkpoint threshold while checkpoints run in the background
/// (pages of the WAL; SQLite's default is 1,000).
pub const BACKSTOP_PAGES: u32 = 20_000;

/// Checkpoints `url`'s WAL every `interval` until `stop` changes.
pub async fn run(url: String, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = match Database::connect(options).await {
        Ok(db) => db,
        Err(e) => {
            // The writer's backstop checkpoints keep the WAL bounded without this task.
            tracing::error!(error = %e, "cannot open the checkpoint connection; SQLite checkpoints in commits");
            return;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = checkpoint(&db).await {
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                }
            }
        }
    }
}

/// One passive checkpoint; records the WAL's size and how much of it is not yet in the
/// database file.
async fn checkpoint(db: &DatabaseConnection) -> Result<(), DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("wal_checkpoint returned no row".into()))?;
    // (busy, frames in the WAL, frames checkpointed); -1 when the database is not in WAL mode.
    let frames: i64 = row.try_get_by_index(1)?;
    let checkpointed: i64 = row.try_get_by_index(2)?;
    metrics::counter!("scenehook_sqlite_checkpoints_total").increment(1);
    metrics::gauge!("scenehook_sqlite_wal_frames").set(frames.max(0) as f64);
    metrics::gauge!("scenehook_sqlite_wal_frames_behind")
        .set((frames - checkpointed).max(0) as f64);
    Ok(())
}
