//! SQLite's ingestion transaction, on a connection of its own driven directly (rusqlite) on the
//! ingestion writers' thread: cached prepared statements, one row at a time, values bound and
//! read by position. SQLite runs in-process, so a statement per row costs a few microseconds; through
//! sqlx's SQLite worker each statement and each row cross a thread and are copied, several
//! times what SQLite spends on them (docs/performance-log.md, *The write alone, below HTTP*).
//!
//! The rest of the gateway reaches the same file through sea-orm's connection, so this one
//! begins `IMMEDIATE`: it takes the write lock up front and waits for it (polling, see
//! [`checkpointer::writer_may_wait`]) instead of failing when another connection wrote first.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use entity::{outbox_job, project, scene};
use parking_lot::Mutex;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, StatementStatus, TransactionBehavior, params,
    types::ValueRef,
};
use sea_orm::{DbErr, RuntimeErr};

use super::{Batch, Claims, Reply, ScenesWanted, apply_transitions, payload_text, scenes_wanted};
use crate::{
    db::checkpointer::{self, Checkpointer},
    db::pipeline::{Work, assemble, changed_rows, record},
    db::wal_vfs,
    domain::Limits,
};

// No `RETURNING`: SQLite collects a statement's returned rows in a temporary table of their
// own; the row count and the last rowid say the same.
const CLAIM_DELIVERY: &str = "INSERT INTO webhook_deliveries \
     (kind, delivery_key, task_id, scene_id, project_id, outcome, received_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, 'accepted', ?6) \
     ON CONFLICT (kind, delivery_key) DO NOTHING";
const DELETE_DELIVERY: &str = "DELETE FROM webhook_deliveries WHERE id = ?1";
// Ids are compared with `(SELECT ?1)` rather than `?1`: with SQLite's STAT4 statistics (after
// an ANALYZE or `PRAGMA optimize`), a statement whose plan may depend on a bound value is
// re-prepared, parsed and planned again, whenever that value changes, which is every time
// here. A subquery's value is not known to the planner, and the unique index serves it alike.
const PROJECT: &str = "SELECT id, name, status, final_video_url, stitch_attempts, last_error, \
     created_at, updated_at, completed_at FROM projects WHERE id = (SELECT ?1)";
const SCENES_OF: &str = concat!(
    "SELECT ",
    scene_columns!(),
    " FROM scenes s WHERE s.project_id = (SELECT ?1)"
);
const SCENE: &str = concat!(
    "SELECT ",
    scene_columns!(),
    " FROM scenes s WHERE s.id = (SELECT ?1)"
);
/// The scene after position ?2 in project ?1.
const NEXT_SCENE: &str = concat!(
    "SELECT ",
    scene_columns!(),
    " FROM scenes s WHERE s.project_id = (SELECT ?1) AND s.position > (SELECT ?2) \
     ORDER BY s.position LIMIT 1"
);
const UPDATE_SCENE: &str = "UPDATE scenes SET status = ?2, video_task_id = ?3, video_url = ?4, \
     first_frame_url = ?5, last_frame_url = ?6, attempts = ?7, extract_attempts = ?8, \
     last_error = ?9, verified_at = ?10, status_changed_at = ?11, updated_at = ?12 WHERE id = (SELECT ?1)";
const UPDATE_PROJECT: &str = "UPDATE projects SET status = ?2, final_video_url = ?3, \
     stitch_attempts = ?4, last_error = ?5, completed_at = ?6, updated_at = ?7 WHERE id = (SELECT ?1)";
/// The statements that find rows by a bound value, through an index (a test checks their plans).
const LOOKUPS: [&str; 6] = [
    PROJECT,
    SCENES_OF,
    SCENE,
    NEXT_SCENE,
    UPDATE_SCENE,
    UPDATE_PROJECT,
];
const INSERT_JOB: &str = "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
     next_attempt_at, last_error, request_id, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// The longest pause before a transaction while the checkpointer catches up (see
/// [`pause_before`]): a webhook's answer waits for it, so it stays well under the 10 ms the
/// p99 is measured against.
const MAX_PAUSE: Duration = Duration::from_millis(5);

/// The ingestion connection. One writer task uses it, a batch at a time.
pub struct SqliteWriter {
    connection: Mutex<Connection>,
    checkpointer: Checkpointer,
    /// How long the last transaction took, from its BEGIN to its COMMIT.
    last_transaction: Mutex<Duration>,
}

impl SqliteWriter {
    /// Opens the database file the gateway migrated, with the settings of its other
    /// connection (WAL, `synchronous=NORMAL`, foreign keys, statement journals in memory,
    /// no automatic checkpoints), through the VFS that writes each commit's WAL frames in one
    /// write ([`wal_vfs`]), and starts the checkpointer, which restarts the WAL once it
    /// reaches `wal_max_bytes`.
    pub fn open(path: &str, wal_max_bytes: u64) -> Result<Self, DbErr> {
        crate::db::configure_sqlite();
        wal_vfs::register().map_err(|rc| {
            DbErr::Custom(format!(
                "registering SQLite's VFS {:?} failed: {rc}",
                wal_vfs::NAME
            ))
        })?;
        let connection = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            wal_vfs::NAME,
        )
        .map_err(db_err)?;
        connection
            .busy_handler(Some(checkpointer::writer_may_wait))
            .map_err(db_err)?;
        connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(db_err)?;
        for (pragma, value) in [
            ("synchronous", "NORMAL"),
            ("foreign_keys", "ON"),
            ("temp_store", "MEMORY"),
            // Left to SQLite, the commit crossing 1,000 WAL pages would copy them into the
            // database file while every queued webhook waits; the checkpointer does it beside.
            ("wal_autocheckpoint", "0"),
            // A transaction that spills pages before its commit rewrites frames after its
            // commit frame; without spills, a commit's WAL writes end with its commit frame,
            // which is where the VFS writes what it gathered (`wal_vfs`). Batches are bounded,
            // so the page cache outgrows `cache_size` by one batch's pages at most.
            ("cache_spill", "OFF"),
        ] {
            connection
                .pragma_update(None, pragma, value)
                .map_err(db_err)?;
        }
        // The WAL is open once a read has run; from then on it gathers each commit's frames.
        connection
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(db_err)?;
        if !wal_vfs::gather_wal_writes(&connection) {
            return Err(DbErr::Custom(
                "SQLite's ingestion connection has no WAL to gather writes in".into(),
            ));
        }
        connection.set_prepared_statement_cache_capacity(16);
        Ok(Self {
            connection: Mutex::new(connection),
            checkpointer: Checkpointer::start(path, wal_max_bytes)?,
            last_transaction: Mutex::new(Duration::ZERO),
        })
    }

    /// How many times SQLite has re-prepared the ingestion statements since they were cached.
    /// It does not grow with use while their plans do not depend on the values bound (see
    /// `PROJECT`). For tests and diagnostics.
    pub fn statements_reprepared(&self) -> Result<i32, DbErr> {
        let connection = self.connection.lock();
        let mut total = 0;
        for sql in [CLAIM_DELIVERY, DELETE_DELIVERY, INSERT_JOB]
            .into_iter()
            .chain(LOOKUPS)
        {
            total += connection
                .prepare_cached(sql)
                .map_err(db_err)?
                .get_status(StatementStatus::RePrepare);
        }
        Ok(total)
    }

    /// Applies `batch` in one transaction, as the Postgres writer does, with the admissions
    /// decided (`admitted`, in batch order); blocks.
    pub(super) fn transaction(
        &self,
        batch: &Batch,
        admitted: &[bool],
        limits: &Limits,
        before_commit: impl FnOnce(),
    ) -> Result<Vec<Reply>, DbErr> {
        let pause = pause_before(
            self.checkpointer.catching_up(),
            *self.last_transaction.lock(),
        );
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        let begun = Instant::now();
        let now = crate::db::clock::now();
        let mut connection = self.connection.lock();
        let txn = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let stamps = Stamps::of(now);
        let claims = claim_deliveries(&txn, batch, &stamps).map_err(db_err)?;
        let claimed = batch.items.iter().zip(&claims).filter(|(_, c)| c.is_some());
        let wanted = scenes_wanted(claimed.map(|(submission, _)| submission));
        let mut works = load(&txn, &wanted).map_err(db_err)?;
        let applied = apply_transitions(batch, &claims, admitted, &mut works, limits, now);
        write(&txn, &stamps, &applied.rejected, &works, &applied.jobs).map_err(db_err)?;
        before_commit();
        txn.commit().map_err(db_err)?;
        self.checkpointer.committed();
        *self.last_transaction.lock() = begun.elapsed();
        record(applied.observations);
        Ok(applied.replies)
    }
}

/// The writer's pause before a transaction: none, unless the checkpointer is catching up before
/// a WAL restart ([`Checkpointer::catching_up`]); then as long as the last transaction took, up
/// to [`MAX_PAUSE`], which halves the rate at which commits dirty pages. Webhooks wait a few
/// milliseconds each, instead of all of them waiting out a long restart.
fn pause_before(catching_up: bool, last_transaction: Duration) -> Duration {
    if catching_up {
        last_transaction.min(MAX_PAUSE)
    } else {
        Duration::ZERO
    }
}

fn claim_deliveries(txn: &Connection, batch: &Batch, stamps: &Stamps) -> rusqlite::Result<Claims> {
    let mut claim = txn.prepare_cached(CLAIM_DELIVERY)?;
    batch
        .items
        .iter()
        .map(|s| {
            let inserted = claim.execute(params![
                s.kind,
                s.key,
                s.callback.task_id(),
                s.callback.scene_id().map(|id| id.as_str()),
                s.callback.project_id().as_str(),
                stamps.now,
            ])?;
            Ok((inserted == 1).then(|| txn.last_insert_rowid()))
        })
        .collect()
}

fn load(
    txn: &Connection,
    wanted: &BTreeMap<&str, ScenesWanted<'_>>,
) -> rusqlite::Result<std::collections::HashMap<String, Work>> {
    let mut project_by_id = txn.prepare_cached(PROJECT)?;
    let mut scenes_of = txn.prepare_cached(SCENES_OF)?;
    let mut scene_by_id = txn.prepare_cached(SCENE)?;
    let mut next_scene = txn.prepare_cached(NEXT_SCENE)?;
    let mut projects = Vec::with_capacity(wanted.len());
    let mut scenes = Vec::new();
    for (&id, want) in wanted {
        let Some(project) = project_by_id.query_row([id], project_row).optional()? else {
            continue;
        };
        projects.push(project);
        let (by_id, with_next): (&[&str], &[&str]) = match want {
            ScenesWanted::All => (&[], &[]),
            ScenesWanted::Named { by_id, with_next } => (by_id, with_next),
        };
        let mut whole = matches!(want, ScenesWanted::All);
        for &scene_id in by_id {
            scenes.extend(scene_by_id.query_row([scene_id], scene_row).optional()?);
        }
        for &scene_id in with_next {
            let Some(scene) = scene_by_id.query_row([scene_id], scene_row).optional()? else {
                continue;
            };
            // A scene of another project is no one's to read, nor is the scene after it.
            if scene.project_id == id {
                match next_scene
                    .query_row(params![id, scene.position], scene_row)
                    .optional()?
                {
                    Some(next) => scenes.push(next),
                    None => whole = true,
                }
            }
            scenes.push(scene);
        }
        if whole {
            for scene in scenes_of.query_map([id], scene_row)? {
                scenes.push(scene?);
            }
        }
    }
    Ok(assemble(projects, scenes))
}

fn write(
    txn: &Connection,
    stamps: &Stamps,
    rejected: &[i64],
    works: &std::collections::HashMap<String, Work>,
    jobs: &[outbox_job::Model],
) -> rusqlite::Result<()> {
    // A rejected delivery is not recorded: once fixed, the sender's retry is applied.
    execute_each(txn, DELETE_DELIVERY, rejected, |id| [id])?;
    let (projects, scenes) = changed_rows(works.values());
    execute_each(txn, UPDATE_SCENE, scenes, |s| {
        (
            &s.id,
            &s.status,
            &s.video_task_id,
            &s.video_url,
            &s.first_frame_url,
            &s.last_frame_url,
            s.attempts,
            s.extract_attempts,
            &s.last_error,
            s.verified_at.as_ref().map(|at| stamps.text(at)),
            s.status_changed_at.as_ref().map(|at| stamps.text(at)),
            stamps.text(&s.updated_at),
        )
    })?;
    execute_each(txn, UPDATE_PROJECT, projects, |p| {
        (
            &p.id,
            &p.status,
            &p.final_video_url,
            p.stitch_attempts,
            &p.last_error,
            p.completed_at.as_ref().map(|at| stamps.text(at)),
            stamps.text(&p.updated_at),
        )
    })?;
    execute_each(txn, INSERT_JOB, jobs, |j| {
        (
            &j.id,
            &j.kind,
            &j.service,
            payload_text(j),
            &j.status,
            j.attempts,
            stamps.text(&j.next_attempt_at),
            &j.last_error,
            &j.request_id,
            stamps.text(&j.created_at),
            stamps.text(&j.updated_at),
        )
    })
}

/// Runs `sql` once for each row, with the values `bind` gives it; prepares nothing for no rows.
fn execute_each<R, P: rusqlite::Params>(
    txn: &Connection,
    sql: &str,
    rows: impl IntoIterator<Item = R>,
    bind: impl Fn(R) -> P,
) -> rusqlite::Result<()> {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut statement = txn.prepare_cached(sql)?;
    for row in rows {
        statement.execute(bind(row))?;
    }
    Ok(())
}

fn project_row(row: &Row) -> rusqlite::Result<project::Model> {
    Ok(project::Model {
        id: row.get(0)?,
        name: row.get(1)?,
        status: row.get(2)?,
        final_video_url: row.get(3)?,
        stitch_attempts: row.get(4)?,
        last_error: row.get(5)?,
        created_at: at(row, 6)?,
        updated_at: at(row, 7)?,
        completed_at: optional_at(row, 8)?,
    })
}

fn scene_row(row: &Row) -> rusqlite::Result<scene::Model> {
    Ok(scene::Model {
        id: row.get(0)?,
        project_id: row.get(1)?,
        position: row.get(2)?,
        prompt: row.get(3)?,
        status: row.get(4)?,
        video_task_id: row.get(5)?,
        video_url: row.get(6)?,
        first_frame_url: row.get(7)?,
        last_frame_url: row.get(8)?,
        attempts: row.get(9)?,
        extract_attempts: row.get(10)?,
        last_error: row.get(11)?,
        verified_at: optional_at(row, 12)?,
        status_changed_at: optional_at(row, 13)?,
        created_at: at(row, 14)?,
        updated_at: at(row, 15)?,
    })
}

/// A stored timestamp: RFC 3339 by chrono's dedicated parser (several times faster than the
/// format-string parse rusqlite's own conversion uses), anything else as rusqlite reads it.
fn at(row: &Row, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    if let Ok(text) = row.get_ref(index)?.as_str()
        && let Ok(at) = DateTime::parse_from_rfc3339(text)
    {
        return Ok(at.with_timezone(&Utc));
    }
    row.get(index)
}

fn optional_at(row: &Row, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get_ref(index)? {
        ValueRef::Null => Ok(None),
        _ => at(row, index).map(Some),
    }
}

/// A timestamp as the gateway's other connection (sqlx) stores it: RFC 3339 text, so that
/// both sort and compare alike (retention deletes by comparing them).
fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// A transaction's timestamps as text. Nearly all of them are the transaction's own time, so
/// that one is formatted once.
struct Stamps {
    at: DateTime<Utc>,
    now: String,
}

impl Stamps {
    fn of(now: DateTime<Utc>) -> Self {
        Self {
            at: now,
            now: timestamp(&now),
        }
    }

    fn text(&self, at: &DateTime<Utc>) -> Cow<'_, str> {
        if *at == self.at {
            Cow::Borrowed(&self.now)
        } else {
            Cow::Owned(timestamp(at))
        }
    }
}

/// A failure as the pooled path reports it: a busy or unreachable database is unavailable
/// (the sender retries later); anything else failed a statement.
fn db_err(e: rusqlite::Error) -> DbErr {
    use rusqlite::ErrorCode;
    let unavailable = matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
        )
    );
    let error = RuntimeErr::Internal(e.to_string());
    if unavailable {
        DbErr::Conn(error)
    } else {
        DbErr::Exec(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_pauses_only_while_the_checkpointer_catches_up() {
        let last = Duration::from_micros(1_800);
        assert_eq!(pause_before(false, last), Duration::ZERO);
        assert_eq!(pause_before(true, last), last);
        assert_eq!(pause_before(true, Duration::from_millis(40)), MAX_PAUSE);
    }

    /// `(SELECT ?1)` keeps the planner from re-preparing per value; it must not cost the
    /// lookups their index either, nor the next scene's its order.
    #[tokio::test]
    async fn every_lookup_searches_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = crate::db::migrated_sqlite(dir.path()).await;
        let writer = SqliteWriter::open(
            &crate::db::sqlite_file(&config.database_url).unwrap(),
            1 << 20,
        )
        .unwrap();
        let connection = writer.connection.lock();
        for sql in LOOKUPS {
            let mut explain = connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            // Unbound parameters are NULL: the plan is what matters.
            let mut rows = explain.raw_query();
            let mut steps = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                let step: String = row.get(3).unwrap();
                // `(SELECT ?1)` itself is one constant row. A sort (`USE TEMP B-TREE FOR
                // ORDER BY`) would read every row the search finds.
                if ((step.starts_with("SCAN") || step.starts_with("SEARCH"))
                    && step != "SCAN CONSTANT ROW")
                    || step.starts_with("USE TEMP B-TREE")
                {
                    steps.push(step);
                }
            }
            assert!(
                !steps.is_empty() && steps.iter().all(|step| step.starts_with("SEARCH")),
                "{sql}: {steps:?}"
            );
        }
    }
}
