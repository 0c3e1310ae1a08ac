//! Postgres's ingestion transaction: a few statements of one shape each, whatever the batch
//! size — the rows travel as arrays (`unnest`) and come back decoded by position — sent
//! through tokio-postgres on connections of the writers' own ([`session`]).
//!
//! A batch is two groups of requests, each sent without waiting for the answers in between:
//! BEGIN, the claims with their projects' locks (one statement) and the scenes (one statement
//! of two, as the batch has last-frame callbacks or not); then, once the transitions are
//! applied in memory, the deletion of rejected deliveries (when there are any), the writes and
//! COMMIT. Postgres runs
//! them one after another as ever; what goes is the wait for each answer before sending the
//! next, seven round trips through sqlx (which has no pipelining) against two
//! (docs/performance-log.md, *The pipelined writer*).
//!
//! Built by sea-orm, a batch's multi-row statements took one text per batch size: up to 64
//! shapes of each, every one planned again at each execution, each batch's text built and
//! hashed anew. Here each statement is prepared once per connection and runs one generic plan
//! ([`session`]), and the writes of a batch (scenes, projects, outbox jobs) go in one statement
//! of data-modifying CTEs.

mod session;
mod tls;

use entity::{project, scene};
use sea_orm::DbErr;
use tokio_postgres::{Row, types::ToSql};

use self::session::db_err;
pub use self::session::{Session, WriterSessions};
use super::{Batch, Claims, Reply, ScenesWanted, apply_transitions, payload_text, scenes_wanted};
use crate::{
    db::pipeline::{assemble, changed_rows, record},
    domain::Limits,
};

/// Claims the deliveries and locks the projects of those claimed, in one statement: the
/// claims are sent before their answer is known, so only they can tell which projects to
/// lock. A duplicate then locks nothing, and a batch of duplicates writes nothing at all (a
/// project locked `FOR UPDATE` is a WAL record and a dirtied page).
///
/// Inserting first claims each delivery: a concurrent transaction holding the same key makes
/// this insert wait for its outcome, then skip the row if it committed. The rows come sorted
/// by key, so two batches that share keys wait on them in the same order, never on each other.
/// The projects are locked in id order, so that concurrent transactions over overlapping
/// projects queue instead of deadlocking; `FOR UPDATE` returns each as its last committed
/// version. The scenes are read by the next statement, whose snapshot is taken once the locks
/// are held (read in this one, they could predate a transaction waited for).
///
/// One row per claim (`claim_id`, `kind`, `delivery_key`, the rest null), then one per
/// project (`claim_id` null, then the project's columns).
const CLAIM_AND_LOCK: &str = "WITH claimed AS (\
       INSERT INTO webhook_deliveries \
       (kind, delivery_key, task_id, scene_id, project_id, outcome, received_at) \
       SELECT kind, delivery_key, task_id, scene_id, project_id, 'accepted', $6 \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
       AS d(kind, delivery_key, task_id, scene_id, project_id) \
       ON CONFLICT (kind, delivery_key) DO NOTHING RETURNING id, kind, delivery_key, project_id\
     ), locked AS (\
       SELECT id, name, status, final_video_url, stitch_attempts, last_error, created_at, \
       updated_at, completed_at FROM projects \
       WHERE id = ANY(ARRAY(SELECT project_id FROM claimed)) ORDER BY id FOR UPDATE\
     ) SELECT id AS claim_id, kind, delivery_key, NULL::text, NULL::text, NULL::text, \
       NULL::text, NULL::int4, NULL::text, NULL::timestamptz, NULL::timestamptz, \
       NULL::timestamptz FROM claimed \
     UNION ALL SELECT NULL, NULL, NULL, id, name, status, final_video_url, stitch_attempts, \
       last_error, created_at, updated_at, completed_at FROM locked";
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
pub const STATEMENTS: [&str; 5] = [
    CLAIM_AND_LOCK,
    SCENES,
    SCENES_AND_NEXT,
    DELETE_DELIVERIES,
    WRITE,
];

/// The writers' connections, one per writer task; each runs a batch at a time.
#[derive(Clone)]
pub struct PgWriter {
    sessions: WriterSessions,
}

impl PgWriter {
    /// Connects `writers` sessions to the database `url` names, as the gateway's pool reads it.
    pub async fn open(
        url: &str,
        writers: usize,
        timeout: std::time::Duration,
    ) -> Result<Self, DbErr> {
        Ok(Self {
            sessions: WriterSessions::open(url, writers, timeout).await?,
        })
    }

    /// The writers' sessions (for tests and diagnostics).
    pub fn sessions(&self) -> &WriterSessions {
        &self.sessions
    }

    /// Applies `batch` in one transaction, as SQLite's writer does.
    pub(super) async fn transaction(
        &self,
        batch: &Batch,
        limits: &Limits,
        before_commit: impl FnOnce(),
    ) -> Result<Vec<Reply>, DbErr> {
        self.sessions
            .run(async move |session: &Session| {
                transaction(session, batch, limits, before_commit).await
            })
            .await
    }
}

async fn transaction(
    session: &Session,
    batch: &Batch,
    limits: &Limits,
    before_commit: impl FnOnce(),
) -> Result<Vec<Reply>, DbErr> {
    let (client, statements) = (&session.client, &session.statements);
    let now = crate::db::clock::now();
    let mut sorted: Vec<_> = batch.items.iter().collect();
    sorted.sort_unstable_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    // The claims are not known before the scenes are asked for: every delivery's scenes are
    // read, a duplicate's too (its project is not locked, and they are left aside).
    let wanted = scenes_wanted(&batch.items);
    let (mut whole, mut by_id, mut with_next) = (Vec::new(), Vec::new(), Vec::new());
    for (&id, want) in &wanted {
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
    let scenes = async {
        if with_next.is_empty() {
            client.query(&statements.scenes, &[&whole, &by_id]).await
        } else {
            let query = &statements.scenes_and_next;
            client.query(query, &[&whole, &by_id, &with_next]).await
        }
    };
    let (kinds, keys, tasks, scene_ids, project_ids) = (
        column(&sorted, |s| s.kind),
        column(&sorted, |s| s.key.as_str()),
        column(&sorted, |s| s.callback.task_id()),
        column(&sorted, |s| s.callback.scene_id().map(|id| id.as_str())),
        column(&sorted, |s| s.callback.project_id().as_str()),
    );
    let claims_and_locks = async {
        let values: [&(dyn ToSql + Sync); 6] =
            [&kinds, &keys, &tasks, &scene_ids, &project_ids, &now];
        client.query(&statements.claim_and_lock, &values).await
    };
    // `biased`: polled in this order, and tokio-postgres sends a request when its future is
    // first polled, so BEGIN goes first and the rest run inside the transaction.
    let (_, claimed_and_locked, scenes) = tokio::try_join!(
        biased;
        client.execute(&statements.begin, &[]),
        claims_and_locks,
        scenes,
    )
    .map_err(db_err)?;
    let (claimed, projects): (Vec<&Row>, Vec<&Row>) = claimed_and_locked
        .iter()
        .partition(|row| matches!(row.try_get::<_, Option<i64>>(0), Ok(Some(_))));
    let claims = claims_in_batch_order(batch, &claimed).map_err(db_err)?;
    let projects = decode(projects, project_row)?;
    let scenes = decode(&scenes, scene_row)?;
    let mut works = assemble(projects, scenes);
    // Decided while the statements above ran: the limiter's round trip and the database's
    // overlap ([`super::Admission`]).
    let admitted = batch.admitted().await;
    let applied = apply_transitions(batch, &claims, &admitted, &mut works, limits, now);
    let (projects, scenes) = changed_rows(works.values());
    let jobs = &applied.jobs;
    let payloads = column(jobs, payload_text);
    before_commit();
    let delete = async {
        if applied.rejected.is_empty() {
            return Ok(0);
        }
        let query = &statements.delete;
        client.execute(query, &[&applied.rejected]).await
    };
    let write = async {
        if projects.is_empty() && scenes.is_empty() && jobs.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &statements.write,
                &[
                    &column(&scenes, |s| s.id.as_str()),
                    &column(&scenes, |s| s.status.as_str()),
                    &column(&scenes, |s| s.video_task_id.as_deref()),
                    &column(&scenes, |s| s.video_url.as_deref()),
                    &column(&scenes, |s| s.first_frame_url.as_deref()),
                    &column(&scenes, |s| s.last_frame_url.as_deref()),
                    &column(&scenes, |s| s.attempts),
                    &column(&scenes, |s| s.extract_attempts),
                    &column(&scenes, |s| s.last_error.as_deref()),
                    &column(&scenes, |s| s.verified_at),
                    &column(&scenes, |s| s.status_changed_at),
                    &column(&scenes, |s| s.updated_at),
                    &column(&projects, |p| p.id.as_str()),
                    &column(&projects, |p| p.status.as_str()),
                    &column(&projects, |p| p.final_video_url.as_deref()),
                    &column(&projects, |p| p.stitch_attempts),
                    &column(&projects, |p| p.last_error.as_deref()),
                    &column(&projects, |p| p.completed_at),
                    &column(&projects, |p| p.updated_at),
                    &column(jobs, |j| j.id.as_str()),
                    &column(jobs, |j| j.kind.as_str()),
                    &column(jobs, |j| j.service.as_str()),
                    &column(&payloads, |t| t.as_str()),
                    &column(jobs, |j| j.status.as_str()),
                    &column(jobs, |j| j.attempts),
                    &column(jobs, |j| j.next_attempt_at),
                    &column(jobs, |j| j.last_error.as_deref()),
                    &column(jobs, |j| j.request_id.as_deref()),
                    &column(jobs, |j| j.created_at),
                    &column(jobs, |j| j.updated_at),
                ],
            )
            .await
    };
    // COMMIT after a failed statement ends the transaction with a rollback and no error of its
    // own: the statements' errors are checked as well, never COMMIT's alone.
    let (deleted, written, committed) = tokio::join!(
        biased;
        delete,
        write,
        client.execute(&statements.commit, &[]),
    );
    deleted.and(written).and(committed).map_err(db_err)?;
    record(applied.observations);
    Ok(applied.replies)
}

/// Each submission's delivery row, as the claims returned them (sorted by key), in batch
/// order; `None` for a delivery already stored.
fn claims_in_batch_order(batch: &Batch, rows: &[&Row]) -> Result<Claims, tokio_postgres::Error> {
    let mut inserted = rows
        .iter()
        .map(|row| Ok((row.try_get(1)?, row.try_get(2)?, row.try_get(0)?)))
        .collect::<Result<Vec<(String, String, i64)>, tokio_postgres::Error>>()?;
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

fn decode<'r, T>(
    rows: impl IntoIterator<Item = &'r Row>,
    decode: fn(&Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>, DbErr> {
    rows.into_iter()
        .map(decode)
        .collect::<Result<_, _>>()
        .map_err(db_err)
}

/// One column of `rows`, as an array to bind.
fn column<'a, R, T>(rows: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

/// A project from [`CLAIM_AND_LOCK`], whose columns follow the claims' three.
fn project_row(row: &Row) -> Result<project::Model, tokio_postgres::Error> {
    Ok(project::Model {
        id: row.try_get(3)?,
        name: row.try_get(4)?,
        status: row.try_get(5)?,
        final_video_url: row.try_get(6)?,
        stitch_attempts: row.try_get(7)?,
        last_error: row.try_get(8)?,
        created_at: row.try_get(9)?,
        updated_at: row.try_get(10)?,
        completed_at: row.try_get(11)?,
    })
}

fn scene_row(row: &Row) -> Result<scene::Model, tokio_postgres::Error> {
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
