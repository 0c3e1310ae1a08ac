//! Postgres's ingestion transaction, through sqlx directly on the writers' own pool: a few
//! statements of one shape each, whatever the batch size — the rows travel as arrays
//! (`unnest`) and come back decoded by position. A batch takes six round trips: BEGIN, the
//! claims, the project locks, the scenes (one statement of two, as the batch has last-frame
//! callbacks or not), the writes, COMMIT (and one more to take back rejected deliveries, when
//! there are any), plus the ping sqlx's pool sends a connection given back to it (keeping
//! the connections out of the pool measured no gain: docs/PERFORMANCE.md, session 18).
//!
//! Built by sea-orm, a batch's multi-row statements took one text per batch size: up to 64
//! shapes of each, every one planned again at each execution, each batch's text built and
//! hashed anew. Here each statement is prepared once per connection and runs one generic plan
//! ([`crate::db::connect_ingestion_writers`]), and the writes of a batch (scenes, projects,
//! outbox jobs) go in one statement of data-modifying CTEs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use entity::{outbox_job, project, scene};
use sea_orm::{
    DatabaseConnection, DbErr, RuntimeErr,
    sqlx::{
        self, PgPool, Postgres, Row,
        postgres::{PgArguments, PgRow},
        query::Query,
    },
};

use super::{Batch, Claims, Reply, ScenesWanted, apply_transitions, payload_text, scenes_wanted};
use crate::{
    db::pipeline::{Work, assemble, changed_rows, record},
    domain::Limits,
};

/// Inserting first claims each delivery: a concurrent transaction holding the same key makes
/// this insert wait for its outcome, then skip the row if it committed. The rows come sorted
/// by key, so two batches that share keys wait on them in the same order, never on each other.
const CLAIM_DELIVERIES: &str = "INSERT INTO webhook_deliveries \
     (kind, delivery_key, task_id, scene_id, project_id, outcome, received_at) \
     SELECT kind, delivery_key, task_id, scene_id, project_id, 'accepted', $6 \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
     AS d(kind, delivery_key, task_id, scene_id, project_id) \
     ON CONFLICT (kind, delivery_key) DO NOTHING RETURNING id, kind, delivery_key";
/// Locked in id order, so that concurrent transactions over overlapping projects queue
/// instead of deadlocking. The scenes are read by the next statement, whose snapshot is taken
/// once the locks are held (read in this one, they could predate a transaction waited for).
const LOCK_PROJECTS: &str = "SELECT id, name, status, final_video_url, stitch_attempts, \
     last_error, created_at, updated_at, completed_at \
     FROM projects WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";
/// Whole projects' scenes ($1), then scenes by id ($2).
macro_rules! scenes_of_projects_or_by_id {
    () => {
        concat!(
            "SELECT ",
            scene_columns!(),
            " FROM scenes s WHERE s.project_id = ANY($1::text[]) UNION ALL SELECT ",
            scene_columns!(),
            " FROM scenes s WHERE s.id = ANY($2::text[])"
        )
    };
}
const SCENES: &str = scenes_of_projects_or_by_id!();
/// [`SCENES`], then scenes by id ($3) with the next one by position, and every scene of their
/// project when there is none: for batches with last-frame callbacks. A statement of its own,
/// as its two more parts cost a batch ~35 µs even when they find nothing.
const SCENES_AND_NEXT: &str = concat!(
    scenes_of_projects_or_by_id!(),
    " UNION ALL SELECT ",
    scene_columns!(),
    " FROM scenes c CROSS JOIN LATERAL (SELECT * FROM scenes s \
     WHERE s.project_id = c.project_id AND s.position >= c.position \
     ORDER BY s.position LIMIT 2) s WHERE c.id = ANY($3::text[]) UNION ALL SELECT ",
    scene_columns!(),
    " FROM scenes c JOIN scenes s ON s.project_id = c.project_id \
     WHERE c.id = ANY($3::text[]) AND NOT EXISTS (SELECT 1 FROM scenes n \
     WHERE n.project_id = c.project_id AND n.position > c.position)"
);
/// Rejected deliveries are not recorded: once fixed, the sender's retry is applied. Rare, so a
/// statement of its own, run only then (a statement's plan is made once per connection, and
/// one that scans a then small table would scan it for every batch, rejections or not).
const DELETE_DELIVERIES: &str = "DELETE FROM webhook_deliveries WHERE id = ANY($1::int8[])";
/// Every other write of a batch in one statement. Its parts touch different tables, so that
/// they cannot see each other's effects (one snapshot for all) changes nothing.
const WRITE: &str = "WITH scene_rows AS (\
       UPDATE scenes s SET status = u.status, video_task_id = u.video_task_id, \
       video_url = u.video_url, first_frame_url = u.first_frame_url, \
       last_frame_url = u.last_frame_url, attempts = u.attempts, \
       extract_attempts = u.extract_attempts, last_error = u.last_error, \
       verified_at = u.verified_at, status_changed_at = u.status_changed_at, \
       updated_at = u.updated_at \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
       $7::int4[], $8::int4[], $9::text[], $10::timestamptz[], $11::timestamptz[], \
       $12::timestamptz[]) AS u(id, status, video_task_id, video_url, first_frame_url, \
       last_frame_url, attempts, extract_attempts, last_error, verified_at, \
       status_changed_at, updated_at) \
       WHERE s.id = u.id\
     ), project_rows AS (\
       UPDATE projects p SET status = u.status, final_video_url = u.final_video_url, \
       stitch_attempts = u.stitch_attempts, last_error = u.last_error, \
       completed_at = u.completed_at, updated_at = u.updated_at \
       FROM unnest($13::text[], $14::text[], $15::text[], $16::int4[], $17::text[], \
       $18::timestamptz[], $19::timestamptz[]) AS u(id, status, final_video_url, \
       stitch_attempts, last_error, completed_at, updated_at) \
       WHERE p.id = u.id\
     ), jobs AS (\
       INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
       next_attempt_at, last_error, request_id, created_at, updated_at) \
       SELECT id, kind, service, payload::json, status, attempts, next_attempt_at, \
       last_error, request_id, created_at, updated_at \
       FROM unnest($20::text[], $21::text[], $22::text[], $23::text[], $24::text[], \
       $25::int4[], $26::timestamptz[], $27::text[], $28::text[], $29::timestamptz[], \
       $30::timestamptz[]) AS j(id, kind, service, payload, status, attempts, \
       next_attempt_at, last_error, request_id, created_at, updated_at)\
     ) SELECT 1";

/// The statements, for tests and diagnostics (their plans).
pub const STATEMENTS: [&str; 6] = [
    CLAIM_DELIVERIES,
    LOCK_PROJECTS,
    SCENES,
    SCENES_AND_NEXT,
    DELETE_DELIVERIES,
    WRITE,
];

/// The writers' pool (sea-orm's, opened with the gateway's settings and generic plans). Each
/// writer task runs a batch at a time on a connection of it.
#[derive(Clone)]
pub struct PgWriter {
    db: DatabaseConnection,
}

impl PgWriter {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The writers' connections (for tests and diagnostics).
    pub fn pool(&self) -> &PgPool {
        self.db.get_postgres_connection_pool()
    }

    /// Applies `batch` in one transaction, as SQLite's writer does.
    pub(super) async fn transaction(
        &self,
        batch: &Batch,
        limits: &Limits,
        before_commit: impl FnOnce(),
    ) -> Result<Vec<Reply>, DbErr> {
        let now = Utc::now();
        let mut txn = self.pool().begin().await.map_err(db_err)?;
        let claims = claim_deliveries(&mut txn, batch, now).await?;
        let mut works = load(&mut txn, &scenes_wanted(batch, &claims)).await?;
        let applied = apply_transitions(batch, &claims, &mut works, limits, now);
        write(&mut txn, &applied.rejected, &works, &applied.jobs).await?;
        before_commit();
        txn.commit().await.map_err(db_err)?;
        record(applied.observations);
        Ok(applied.replies)
    }
}

type Txn = sqlx::Transaction<'static, Postgres>;

async fn claim_deliveries(
    txn: &mut Txn,
    batch: &Batch,
    now: DateTime<Utc>,
) -> Result<Claims, DbErr> {
    let mut sorted: Vec<_> = batch.items.iter().collect();
    sorted.sort_unstable_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    let rows = sqlx::query(CLAIM_DELIVERIES)
        .bind(column(&sorted, |s| s.kind))
        .bind(column(&sorted, |s| s.key.as_str()))
        .bind(column(&sorted, |s| s.callback.task_id()))
        .bind(column(&sorted, |s| {
            s.callback.scene_id().map(|id| id.as_str())
        }))
        .bind(column(&sorted, |s| s.callback.project_id().as_str()))
        .bind(now)
        .fetch_all(&mut **txn)
        .await
        .map_err(db_err)?;
    let mut inserted = rows
        .iter()
        .map(|row| Ok((row.try_get(1)?, row.try_get(2)?, row.try_get(0)?)))
        .collect::<Result<Vec<(String, String, i64)>, sqlx::Error>>()
        .map_err(db_err)?;
    inserted.sort_unstable();
    Ok(batch
        .items
        .iter()
        .map(|s| {
            inserted
                .binary_search_by(|(kind, key, _)| {
                    (kind.as_str(), key.as_str()).cmp(&(s.kind, s.key.as_str()))
                })
                .ok()
                .map(|at| inserted[at].2)
        })
        .collect())
}

async fn load(
    txn: &mut Txn,
    wanted: &BTreeMap<&str, ScenesWanted<'_>>,
) -> Result<HashMap<String, Work>, DbErr> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = wanted.keys().copied().collect();
    let projects = fetch(txn, sqlx::query(LOCK_PROJECTS).bind(ids), project_row).await?;
    let (mut whole, mut by_id, mut with_next) = (Vec::new(), Vec::new(), Vec::new());
    for (&id, want) in wanted {
        match want {
            ScenesWanted::All => whole.push(id),
            ScenesWanted::Named {
                by_id: these,
                with_next: before_next,
            } => {
                by_id.extend_from_slice(these);
                with_next.extend_from_slice(before_next);
            }
        }
    }
    let query = if with_next.is_empty() {
        sqlx::query(SCENES).bind(whole).bind(by_id)
    } else {
        sqlx::query(SCENES_AND_NEXT)
            .bind(whole)
            .bind(by_id)
            .bind(with_next)
    };
    let scenes = fetch(txn, query, scene_row).await?;
    Ok(assemble(projects, scenes))
}

/// Runs `query` and decodes every row it returns.
async fn fetch<T>(
    txn: &mut Txn,
    query: Query<'_, Postgres, PgArguments>,
    decode: fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, DbErr> {
    let rows = query.fetch_all(&mut **txn).await.map_err(db_err)?;
    rows.iter()
        .map(decode)
        .collect::<Result<_, _>>()
        .map_err(db_err)
}

async fn write(
    txn: &mut Txn,
    rejected: &[i64],
    works: &HashMap<String, Work>,
    jobs: &[outbox_job::Model],
) -> Result<(), DbErr> {
    if !rejected.is_empty() {
        sqlx::query(DELETE_DELIVERIES)
            .bind(rejected)
            .execute(&mut **txn)
            .await
            .map_err(db_err)?;
    }
    let (projects, scenes) = changed_rows(works.values());
    if projects.is_empty() && scenes.is_empty() && jobs.is_empty() {
        return Ok(());
    }
    sqlx::query(WRITE)
        .bind(column(&scenes, |s| s.id.as_str()))
        .bind(column(&scenes, |s| s.status.as_str()))
        .bind(column(&scenes, |s| s.video_task_id.as_deref()))
        .bind(column(&scenes, |s| s.video_url.as_deref()))
        .bind(column(&scenes, |s| s.first_frame_url.as_deref()))
        .bind(column(&scenes, |s| s.last_frame_url.as_deref()))
        .bind(column(&scenes, |s| s.attempts))
        .bind(column(&scenes, |s| s.extract_attempts))
        .bind(column(&scenes, |s| s.last_error.as_deref()))
        .bind(column(&scenes, |s| s.verified_at))
        .bind(column(&scenes, |s| s.status_changed_at))
        .bind(column(&scenes, |s| s.updated_at))
        .bind(column(&projects, |p| p.id.as_str()))
        .bind(column(&projects, |p| p.status.as_str()))
        .bind(column(&projects, |p| p.final_video_url.as_deref()))
        .bind(column(&projects, |p| p.stitch_attempts))
        .bind(column(&projects, |p| p.last_error.as_deref()))
        .bind(column(&projects, |p| p.completed_at))
        .bind(column(&projects, |p| p.updated_at))
        .bind(column(jobs, |j| j.id.as_str()))
        .bind(column(jobs, |j| j.kind.as_str()))
        .bind(column(jobs, |j| j.service.as_str()))
        .bind(column(jobs, payload_text))
        .bind(column(jobs, |j| j.status.as_str()))
        .bind(column(jobs, |j| j.attempts))
        .bind(column(jobs, |j| j.next_attempt_at))
        .bind(column(jobs, |j| j.last_error.as_deref()))
        .bind(column(jobs, |j| j.request_id.as_deref()))
        .bind(column(jobs, |j| j.created_at))
        .bind(column(jobs, |j| j.updated_at))
        .execute(&mut **txn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// One column of `rows`, as an array to bind.
fn column<'a, R, T>(rows: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

fn project_row(row: &PgRow) -> Result<project::Model, sqlx::Error> {
    Ok(project::Model {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        status: row.try_get(2)?,
        final_video_url: row.try_get(3)?,
        stitch_attempts: row.try_get(4)?,
        last_error: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
        completed_at: row.try_get(8)?,
    })
}

fn scene_row(row: &PgRow) -> Result<scene::Model, sqlx::Error> {
    Ok(scene::Model {
        id: row.try_get(0)?,
        project_id: row.try_get(1)?,
        position: row.try_get(2)?,
        prompt: row.try_get(3)?,
        status: row.try_get(4)?,
        video_task_id: row.try_get(5)?,
        video_url: row.try_get(6)?,
        first_frame_url: row.try_get(7)?,
        last_frame_url: row.try_get(8)?,
        attempts: row.try_get(9)?,
        extract_attempts: row.try_get(10)?,
        last_error: row.try_get(11)?,
        verified_at: row.try_get(12)?,
        status_changed_at: row.try_get(13)?,
        created_at: row.try_get(14)?,
        updated_at: row.try_get(15)?,
    })
}

/// A failure as sea-orm reports sqlx's, so that [`crate::db::is_unavailable`] tells a lost
/// connection (retry later) from a refused statement.
fn db_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}
