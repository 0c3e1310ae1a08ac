//! Outbox queries. A claim moves due jobs to `in_flight` with a lease (`next_attempt_at` is
//! the lease's end) and bumps `attempts`, which doubles as a fencing token: a worker whose
//! lease expired and was re-claimed elsewhere can no longer complete or reschedule the job.
//!
//! The jobs have one index besides their ids, the claims' (service, status, next attempt):
//! every webhook appends to it. The queries by status name every service, so it serves them
//! too (migration 5 dropped a second index by status for that reason).

use std::collections::HashSet;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entity::outbox_job;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, DeleteMany, EntityTrait,
    FromQueryResult, QueryFilter, QuerySelect, Select, Statement, UpdateMany,
    sea_query::{Asterisk, Expr, Func, Order, Query, SelectStatement, SimpleExpr},
};

use crate::outbox::{JobStatus, Service};

/// Every service, as the first condition of a query by status: it lets the claims' index,
/// which starts with the service, find the rows (a lookup per service).
fn of_any_service() -> SimpleExpr {
    outbox_job::Column::Service.is_in(Service::ALL.map(Service::as_str))
}

/// `service`, or every service.
fn of_service(service: Option<Service>) -> SimpleExpr {
    match service {
        Some(service) => outbox_job::Column::Service.eq(service.as_str()),
        None => of_any_service(),
    }
}

/// The claim on Postgres: `$1` the lease in milliseconds, `$2` the service, `$3` the limit.
/// Due times and leases are judged by the server's clock (`now()`), which every instance
/// shares: an instance whose own clock runs ahead cannot take a lease before it ends.
/// One index scan per status, each in the index's order and stopping at the limit: with both
/// statuses in one scan, Postgres sorts every due job before it locks the first (22-26 ms a
/// claim with 50,000 waiting, against 0.2-1.1 ms so), and a lane claims as each call is
/// settled. SQLite stops early by itself (0.05 ms with 50,000 waiting).
pub const CLAIM_POSTGRES: &str = "WITH pending AS (SELECT id, next_attempt_at FROM outbox_jobs \
       WHERE service = $2 AND status = 'pending' AND next_attempt_at <= now() \
       ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
     expired AS (SELECT id, next_attempt_at FROM outbox_jobs \
       WHERE service = $2 AND status = 'in_flight' AND next_attempt_at <= now() \
       ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
     UPDATE outbox_jobs SET status = 'in_flight', attempts = attempts + 1, \
     next_attempt_at = now() + $1 * interval '1 millisecond', updated_at = now() \
     WHERE id = ANY(ARRAY(SELECT id FROM (SELECT * FROM pending UNION ALL \
       SELECT * FROM expired) due ORDER BY next_attempt_at LIMIT $3)) \
     RETURNING *";

/// The longest lease the Postgres claim is given, in milliseconds (ten years): a configured
/// lease beyond it would only overflow the server's timestamps and fail every claim.
const LONGEST_LEASE_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

/// `delay` after `at`, or the latest time there is for a delay beyond it: a retry's, a
/// release's or a lease's end, so that a configuration's nonsense cannot panic a lane.
pub fn after(at: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    ChronoDuration::from_std(delay)
        .ok()
        .and_then(|delay| at.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A lane's claim: up to `limit` due jobs of `service`, leased for `lease`.
pub struct Claim<'a> {
    pub service: &'a str,
    pub limit: u64,
    pub lease: std::time::Duration,
    /// The claiming instance's clock, by which SQLite's claim judges due jobs and leases (one
    /// host's processes share the file). Postgres's claim uses the server's clock instead.
    pub now: DateTime<Utc>,
}

/// Claims up to `limit` due jobs of `service`, if a claim is wanted: pending ones whose time
/// has come and in-flight ones whose lease expired (their instance died). Two instances never
/// claim the same job: Postgres skips rows another claim has locked, SQLite runs one write at
/// a time.
async fn claim(
    db: &impl ConnectionTrait,
    claim: Option<Claim<'_>>,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    let Some(claim) = claim else {
        return Ok(Vec::new());
    };
    let backend = db.get_database_backend();
    let statement = if super::is_postgres(db) {
        let lease_ms = i64::try_from(claim.lease.as_millis())
            .unwrap_or(i64::MAX)
            .min(LONGEST_LEASE_MS);
        Statement::from_sql_and_values(
            backend,
            CLAIM_POSTGRES,
            [
                lease_ms.into(),
                claim.service.into(),
                (claim.limit as i64).into(),
            ],
        )
    } else {
        Statement::from_sql_and_values(
            backend,
            "UPDATE outbox_jobs SET status = 'in_flight', attempts = attempts + 1, \
             next_attempt_at = $1, updated_at = $2 \
             WHERE id IN (SELECT id FROM outbox_jobs WHERE service = $3 \
               AND status IN ('pending', 'in_flight') AND next_attempt_at <= $2 \
               ORDER BY next_attempt_at LIMIT $4) \
             RETURNING *",
            [
                after(claim.now, claim.lease).into(),
                claim.now.into(),
                claim.service.into(),
                (claim.limit as i64).into(),
            ],
        )
    };
    outbox_job::Entity::find()
        .from_raw_sql(statement)
        .all(db)
        .await
}

/// What became of a claimed job's attempt.
#[derive(Debug)]
pub enum Settle {
    /// The service took it.
    Done,
    /// Another attempt at `at`.
    RetryAt { at: DateTime<Utc>, error: String },
    /// No attempt left, or one that cannot succeed.
    Dead { error: String },
    /// Back to pending at `at` without counting the attempt: its breaker opened after the claim.
    Release { at: DateTime<Utc> },
}

/// What [`settle_and_claim`] wrote.
#[derive(Debug)]
pub struct Settled {
    /// The ids of the settled jobs this worker no longer held: their lease had expired and
    /// another claim had taken them.
    pub lost: Vec<String>,
    pub claimed: Vec<outbox_job::Model>,
}

/// Writes what became of a lane's finished jobs and claims its next ones, in one transaction:
/// a commit per batch of jobs instead of two per job (on SQLite, one turn at the write lock
/// the ingestion writer also takes; on Postgres, one flush). A job is settled only if this
/// worker still holds it: the same attempt, still in flight. The done ones, nearly all of
/// them, go in one statement.
pub async fn settle_and_claim(
    db: &DatabaseConnection,
    finished: &[(outbox_job::Model, Settle)],
    next: Option<Claim<'_>>,
) -> Result<Settled, DbErr> {
    if finished.is_empty() {
        // A claim alone is one statement: no transaction around it.
        return Ok(Settled {
            lost: Vec::new(),
            claimed: claim(db, next).await?,
        });
    }
    let txn = super::begin(db).await?;
    if super::is_postgres(&txn) {
        // Not waiting for the flush: a commit lost with the server sends its jobs again
        // (a settle's when the lease expires, a claim's at once), which the outbox's
        // at-least-once delivery and its `Idempotency-Key` already allow for. The drain on
        // Postgres: +20 % jobs a second over four alternating pairs, three of them ahead.
        txn.execute_unprepared("SET LOCAL synchronous_commit = off")
            .await?;
    }
    let mut lost = Vec::new();
    let done: Vec<&outbox_job::Model> = finished
        .iter()
        .filter(|(_, settle)| matches!(settle, Settle::Done))
        .map(|(job, _)| job)
        .collect();
    // Chunks keep a statement's parameters within what SQLite binds (32,766) whatever the
    // lane's configured capacity.
    for done in done.chunks(COMPLETE_CHUNK) {
        let completed: HashSet<String> = complete_all(&txn, done).await?.into_iter().collect();
        lost.extend(
            done.iter()
                .filter(|job| !completed.contains(&job.id))
                .map(|job| job.id.clone()),
        );
    }
    for (job, settle) in finished {
        let (status, at, attempts, error) = match settle {
            Settle::Done => continue,
            Settle::RetryAt { at, error } => {
                (JobStatus::Pending, *at, job.attempts, Some(error.clone()))
            }
            Settle::Dead { error } => (
                JobStatus::Dead,
                super::clock::now(),
                job.attempts,
                Some(error.clone()),
            ),
            Settle::Release { at } => (
                JobStatus::Pending,
                *at,
                job.attempts - 1,
                job.last_error.clone(),
            ),
        };
        if !update_held(&txn, job, status, at, attempts, error).await? {
            lost.push(job.id.clone());
        }
    }
    let claimed = claim(&txn, next).await?;
    txn.commit().await?;
    Ok(Settled { lost, claimed })
}

/// Jobs marked done a statement, two parameters each.
const COMPLETE_CHUNK: usize = 1_000;

/// Marks `jobs` done, those this worker still holds; returns their ids.
async fn complete_all(
    db: &impl ConnectionTrait,
    jobs: &[&outbox_job::Model],
) -> Result<Vec<String>, DbErr> {
    let now = super::clock::now();
    // `$1` now, then each job's id and attempt. The ids alone find the rows by key; the pairs
    // check that each is still this attempt.
    let mut values: Vec<sea_orm::Value> = vec![now.into()];
    let mut ids = Vec::with_capacity(jobs.len());
    let mut pairs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let n = values.len();
        ids.push(format!("${}", n + 1));
        pairs.push(format!("(${}, ${})", n + 1, n + 2));
        values.push(job.id.clone().into());
        values.push(job.attempts.into());
    }
    let sql = format!(
        "UPDATE outbox_jobs SET status = 'done', next_attempt_at = $1, updated_at = $1, \
         last_error = NULL WHERE id IN ({}) AND status = 'in_flight' \
         AND (id, attempts) IN (VALUES {}) RETURNING id",
        ids.join(", "),
        pairs.join(", ")
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .await?;
    rows.iter().map(|row| row.try_get_by_index(0)).collect()
}

/// Updates a claimed job if this worker still holds it (same attempt number, still in flight).
async fn update_held(
    db: &impl ConnectionTrait,
    job: &outbox_job::Model,
    status: JobStatus,
    next_attempt_at: DateTime<Utc>,
    attempts: i32,
    last_error: Option<String>,
) -> Result<bool, DbErr> {
    let result = outbox_job::Entity::update_many()
        .col_expr(outbox_job::Column::Status, Expr::value(status.as_str()))
        .col_expr(
            outbox_job::Column::NextAttemptAt,
            Expr::value(next_attempt_at),
        )
        .col_expr(outbox_job::Column::Attempts, Expr::value(attempts))
        .col_expr(outbox_job::Column::LastError, Expr::value(last_error))
        .col_expr(
            outbox_job::Column::UpdatedAt,
            Expr::value(super::clock::now()),
        )
        .filter(outbox_job::Column::Id.eq(job.id.as_str()))
        .filter(outbox_job::Column::Status.eq(JobStatus::InFlight.as_str()))
        .filter(outbox_job::Column::Attempts.eq(job.attempts))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Up to `limit` jobs (of `status`, of `service`), the latest first by the time that goes with
/// each status: when it is due (pending), when its lease ends (in flight), when it was done or
/// died ([`listing`]).
pub async fn list(
    db: &DatabaseConnection,
    status: Option<JobStatus>,
    service: Option<Service>,
    limit: u64,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    super::rows_of::<outbox_job::Entity>(db, &listing(status, service, limit)).await
}

/// Each (service, status) pair's latest `limit` jobs, read backwards along the claims' index
/// and stopping there, then the latest `limit` of those. Ordered by any other column, a listing
/// would sort every job of its status first, and done jobs are kept for days: on SQLite that
/// holds the pooled connection the lanes write through for as long. Public for tests and
/// diagnostics (its plans).
pub fn listing(status: Option<JobStatus>, service: Option<Service>, limit: u64) -> SelectStatement {
    let services = service.map_or(Service::ALL.to_vec(), |s| vec![s]);
    let statuses = status.map_or(JobStatus::ALL.to_vec(), |s| vec![s]);
    let pairs = services
        .iter()
        .flat_map(|&service| statuses.iter().map(move |&status| (service, status)));
    let arms = pairs.map(|(service, status)| latest_of(service, status, limit));
    super::latest_across(arms, outbox_job::Column::NextAttemptAt, limit)
}

/// The latest `limit` jobs of `service` in `status`: the claims' index read backwards. Ordered
/// by its last column alone, as a tie-break on another would sort them all again.
fn latest_of(service: Service, status: JobStatus, limit: u64) -> SelectStatement {
    Query::select()
        .column(Asterisk)
        .from(outbox_job::Entity)
        .and_where(outbox_job::Column::Service.eq(service.as_str()))
        .and_where(outbox_job::Column::Status.eq(status.as_str()))
        .order_by(outbox_job::Column::NextAttemptAt, Order::Desc)
        .limit(limit)
        .to_owned()
}

/// Re-queues dead jobs (one, or all of a service) with a fresh set of attempts. All of them
/// go [`super::PRUNE_CHUNK`] at a time, each chunk a statement of its own: after a long
/// outage they may be tens of thousands, and on SQLite one statement for all of them would
/// hold the write lock every webhook's transaction waits for.
pub async fn replay(
    db: &DatabaseConnection,
    id: Option<&str>,
    service: Option<Service>,
) -> Result<u64, DbErr> {
    match id {
        Some(id) => Ok(replaying(service)
            .filter(outbox_job::Column::Id.eq(id))
            .exec(db)
            .await?
            .rows_affected),
        None => {
            super::in_chunks(|| async move {
                Ok(replaying_chunk(service).exec(db).await?.rows_affected)
            })
            .await
        }
    }
}

/// Dead jobs of `service` (or every service) back to pending.
fn replaying(service: Option<Service>) -> UpdateMany<outbox_job::Entity> {
    let now = super::clock::now();
    outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::Status,
            Expr::value(JobStatus::Pending.as_str()),
        )
        .col_expr(outbox_job::Column::Attempts, Expr::value(0))
        .col_expr(outbox_job::Column::NextAttemptAt, Expr::value(now))
        .col_expr(outbox_job::Column::UpdatedAt, Expr::value(now))
        .filter(of_service(service))
        .filter(outbox_job::Column::Status.eq(JobStatus::Dead.as_str()))
}

/// At most [`super::PRUNE_CHUNK`] of [`replaying`].
fn replaying_chunk(service: Option<Service>) -> UpdateMany<outbox_job::Entity> {
    let chunk = Query::select()
        .column(outbox_job::Column::Id)
        .from(outbox_job::Entity)
        .and_where(of_service(service))
        .and_where(outbox_job::Column::Status.eq(JobStatus::Dead.as_str()))
        .limit(super::PRUNE_CHUNK)
        .to_owned();
    replaying(service).filter(outbox_job::Column::Id.in_subquery(chunk))
}

/// Deletes the jobs done before `cutoff` (a done job's next attempt is when it was done, so
/// the claims' index finds them), in chunks; returns how many.
pub async fn prune_done(db: &DatabaseConnection, cutoff: DateTime<Utc>) -> Result<u64, DbErr> {
    super::in_chunks(|| async move { Ok(done_before(cutoff).exec(db).await?.rows_affected) }).await
}

/// At most [`super::PRUNE_CHUNK`] of the jobs done before `cutoff`.
fn done_before(cutoff: DateTime<Utc>) -> DeleteMany<outbox_job::Entity> {
    let chunk = Query::select()
        .column(outbox_job::Column::Id)
        .from(outbox_job::Entity)
        .and_where(of_any_service())
        .and_where(outbox_job::Column::Status.eq(JobStatus::Done.as_str()))
        .and_where(outbox_job::Column::NextAttemptAt.lt(cutoff))
        .and_where(outbox_job::Column::UpdatedAt.lt(cutoff))
        .limit(super::PRUNE_CHUNK)
        .to_owned();
    outbox_job::Entity::delete_many().filter(outbox_job::Column::Id.in_subquery(chunk))
}

pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<outbox_job::Model>, DbErr> {
    outbox_job::Entity::find_by_id(id.to_owned()).one(db).await
}

/// Job counts by service and status, and how long the pending job that came due first has
/// been waiting since (0 when none is due): the queue's delay. A job waiting out a retry's
/// backoff is not late; one that waits behind a backlog is.
pub struct OutboxStats {
    pub counts: Vec<(String, String, i64)>,
    pub oldest_pending_secs: f64,
}

/// Read on every scrape: both queries stay in the claims' index (the counts count its entries
/// without reading a row; the earliest due time is a seek a service), so a backlog of
/// hundreds of thousands of jobs costs a scrape milliseconds, not the pooled connection the
/// lanes write through for a tenth of a second.
pub async fn stats(db: &DatabaseConnection) -> Result<OutboxStats, DbErr> {
    #[derive(FromQueryResult)]
    struct Count {
        service: String,
        status: String,
        n: i64,
    }
    let counts = not_done_counts().into_model::<Count>().all(db).await?;
    let backend = db.get_database_backend();
    let earliest = db
        .query_all_raw(backend.build(&earliest_due_per_service()))
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<Option<DateTime<Utc>>>(0))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .min();
    let oldest_pending_secs = earliest
        .map(|due| (super::clock::now() - due).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok(OutboxStats {
        counts: counts
            .into_iter()
            .map(|c| (c.service, c.status, c.n))
            .collect(),
        oldest_pending_secs,
    })
}

fn not_done_counts() -> Select<outbox_job::Entity> {
    outbox_job::Entity::find()
        .select_only()
        .column(outbox_job::Column::Service)
        .column(outbox_job::Column::Status)
        // `COUNT(*)`, not of a column the index lacks: the index alone answers.
        .column_as(Expr::from(Func::count(Expr::col(Asterisk))), "n")
        .filter(of_any_service())
        .filter(outbox_job::Column::Status.is_in(JobStatus::NOT_DONE.map(JobStatus::as_str)))
        .group_by(outbox_job::Column::Service)
        .group_by(outbox_job::Column::Status)
}

/// The earliest next attempt among each service's pending jobs, a row a service.
fn earliest_due_per_service() -> SelectStatement {
    let of = |service: Service| {
        Query::select()
            .expr(Func::min(Expr::col(outbox_job::Column::NextAttemptAt)))
            .from(outbox_job::Entity)
            .and_where(outbox_job::Column::Service.eq(service.as_str()))
            .and_where(outbox_job::Column::Status.eq(JobStatus::Pending.as_str()))
            .to_owned()
    };
    super::union_all(Service::ALL.map(of))
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;
    use crate::db::{migrated, query_plan};

    /// Replaying every dead job goes a chunk at a time, and every chunk is replayed: the
    /// loop ends only at a chunk that found fewer than a chunk's worth.
    #[tokio::test]
    async fn replaying_all_dead_jobs_goes_in_chunks_to_the_last() {
        let (_dir, db) = migrated().await;
        let dead = 2 * crate::db::PRUNE_CHUNK + 500;
        db.execute_unprepared(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {dead}) \
             INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
               next_attempt_at, created_at, updated_at) \
             SELECT 'job_' || i, 'stitch_project', \
               CASE WHEN i <= 10 THEN 'notification' ELSE 'stitch' END, '{{}}', 'dead', 20, \
               '2026-12-01 10:00:00+00:00', '2026-12-01 10:00:00+00:00', \
               '2026-12-01 10:00:00+00:00' FROM n"
        ))
        .await
        .unwrap();
        let replayed = replay(&db, None, Some(Service::Stitch)).await.unwrap();
        assert_eq!(replayed, dead - 10);
        let left = |status: &'static str| {
            let db = db.clone();
            async move {
                db.query_one_raw(Statement::from_string(
                    DbBackend::Sqlite,
                    format!("SELECT count(*) FROM outbox_jobs WHERE status = '{status}'"),
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index::<i64>(0)
                .unwrap()
            }
        };
        assert_eq!(left("dead").await, 10, "another service's dead jobs stay");
        assert_eq!(left("pending").await as u64, dead - 10);
    }

    /// The queries by status reach the jobs through the claims' index, which begins with the
    /// service: there is no other index by status.
    #[tokio::test]
    async fn the_queries_by_status_search_the_claims_index() {
        let (_dir, db) = migrated().await;
        let sqlite = DbBackend::Sqlite;
        for statement in [
            replaying(None).build(sqlite),
            replaying_chunk(None).build(sqlite),
            replaying_chunk(Some(Service::Stitch)).build(sqlite),
            done_before(Utc::now()).build(sqlite),
        ] {
            let steps: Vec<String> = query_plan(&db, statement)
                .await
                .into_iter()
                .filter(|step| !step.starts_with("USE TEMP"))
                .collect();
            // Retention's chunk also finds the rows it picked by id.
            assert!(
                steps.iter().all(|step| step.starts_with("SEARCH"))
                    && steps.iter().any(|step| {
                        step.starts_with("SEARCH outbox_jobs USING INDEX idx_outbox_jobs_due")
                    }),
                "{steps:?}"
            );
        }
    }

    /// A listing reads each (service, status) pair's jobs backwards along the claims' index
    /// and stops at its limit: it sorts only what those reads return, never a whole status.
    #[tokio::test]
    async fn a_listing_reads_the_claims_index_backwards_and_stops() {
        let (_dir, db) = migrated().await;
        let sqlite = DbBackend::Sqlite;
        let search = "SEARCH outbox_jobs USING INDEX idx_outbox_jobs_due (service=? AND status=?)";
        let arm = query_plan(
            &db,
            sqlite.build(&latest_of(Service::Video, JobStatus::Done, 10)),
        )
        .await;
        assert!(arm.len() == 1 && arm[0].starts_with(search), "{arm:#?}");
        for (status, service, arms) in [
            (Some(JobStatus::Dead), None, 4),
            (Some(JobStatus::Pending), Some(Service::Video), 1),
            (None, Some(Service::Video), 4),
            (None, None, 16),
        ] {
            let steps = query_plan(&db, sqlite.build(&listing(status, service, 10))).await;
            assert!(
                crate::db::reads_each_arm_and_stops(&steps, search, arms, "outbox_jobs"),
                "{steps:#?}"
            );
        }
    }

    /// A listing holds the latest jobs of what it asks for, across services and statuses.
    #[tokio::test]
    async fn a_listing_holds_the_latest_jobs_asked_for() {
        let (_dir, db) = migrated().await;
        // Job `n` at minute `n`: services and statuses in turn.
        let mut jobs = Vec::new();
        for n in 0..40 {
            let service = Service::ALL[n % 4];
            let status = JobStatus::ALL[(n / 4) % 4];
            jobs.push(format!(
                "('job_{n:02}', 'k', '{service}', '{{}}', '{status}', 1, \
                 '2026-12-01T10:{n:02}:00+00:00', '2026-12-01T10:00:00+00:00', \
                 '2026-12-01T10:00:00+00:00')"
            ));
        }
        db.execute_unprepared(&format!(
            "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
               next_attempt_at, created_at, updated_at) VALUES {}",
            jobs.join(", ")
        ))
        .await
        .unwrap();
        let ids = async |status, service, limit| {
            let jobs = list(&db, status, service, limit).await.unwrap();
            jobs.into_iter().map(|job| job.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(None, None, 3).await, ["job_39", "job_38", "job_37"]);
        // Dead: n / 4 % 4 == 3, so 12-15 and 28-31.
        let dead = ids(Some(JobStatus::Dead), None, 5).await;
        assert_eq!(dead, ["job_31", "job_30", "job_29", "job_28", "job_15"]);
        let video = ids(None, Some(Service::Video), 3).await;
        assert_eq!(video, ["job_36", "job_32", "job_28"]);
        let pending_stitch = ids(Some(JobStatus::Pending), Some(Service::Stitch), 10).await;
        assert_eq!(pending_stitch, ["job_34", "job_18", "job_02"]);
    }

    #[test]
    fn a_delay_beyond_any_timestamp_is_the_latest_one() {
        use std::time::Duration;
        assert_eq!(after(Utc::now(), Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after(Utc::now(), Duration::from_secs(u64::MAX / 1000)),
            DateTime::<Utc>::MAX_UTC
        );
        let soon = after(Utc::now(), Duration::from_secs(60)) - Utc::now();
        assert!((59..=60).contains(&soon.num_seconds()), "{soon}");
    }

    /// A lane of any configured capacity settles what it claimed: its done jobs go in
    /// statements that stay within SQLite's parameters, however many.
    #[tokio::test]
    async fn a_lane_settles_more_jobs_than_one_statement_binds() {
        let (_dir, db) = migrated().await;
        let jobs = 20_000;
        db.execute_unprepared(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs}) \
             INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
               next_attempt_at, created_at, updated_at) \
             SELECT 'job_' || i, 'extract_last_frame', 'last_frame', '{{}}', 'pending', 0, \
               '2026-12-01 10:00:00+00:00', '2026-12-01 10:00:00+00:00', \
               '2026-12-01 10:00:00+00:00' FROM n"
        ))
        .await
        .unwrap();
        let claim = Claim {
            service: "last_frame",
            limit: jobs,
            lease: std::time::Duration::from_secs(30),
            now: Utc::now(),
        };
        let claimed = settle_and_claim(&db, &[], Some(claim))
            .await
            .unwrap()
            .claimed;
        assert_eq!(claimed.len() as u64, jobs);
        let finished: Vec<_> = claimed.into_iter().map(|job| (job, Settle::Done)).collect();
        let settled = settle_and_claim(&db, &finished, None).await.unwrap();
        assert!(settled.lost.is_empty());
        let done = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT count(*) FROM outbox_jobs WHERE status = 'done'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(done as u64, jobs);
    }

    /// The queue's delay counts from when a pending job came due, not from when it was
    /// queued: a job waiting out a retry's backoff is not late.
    #[tokio::test]
    async fn the_queue_delay_counts_from_when_a_job_came_due() {
        let (_dir, db) = migrated().await;
        let insert = |id: &str, service: &str, due: DateTime<Utc>| {
            let sql = format!(
                "INSERT INTO outbox_jobs (id, kind, service, payload, status, attempts, \
                   next_attempt_at, created_at, updated_at) \
                 VALUES ('{id}', 'k', '{service}', '{{}}', 'pending', 3, '{}', \
                   '2020-01-01T00:00:00+00:00', '2020-01-01T00:00:00+00:00')",
                due.to_rfc3339()
            );
            let db = db.clone();
            async move { db.execute_unprepared(&sql).await.unwrap() }
        };
        insert(
            "backing_off",
            "video",
            Utc::now() + ChronoDuration::minutes(5),
        )
        .await;
        assert_eq!(stats(&db).await.unwrap().oldest_pending_secs, 0.0);
        insert("late", "stitch", Utc::now() - ChronoDuration::seconds(90)).await;
        insert(
            "less_late",
            "video",
            Utc::now() - ChronoDuration::seconds(30),
        )
        .await;
        let delay = stats(&db).await.unwrap().oldest_pending_secs;
        assert!((90.0..100.0).contains(&delay), "{delay}");
    }

    /// The queries behind every scrape's gauges read the claims' index alone and sort
    /// nothing, however many jobs wait.
    #[tokio::test]
    async fn the_gauges_read_the_claims_index_alone() {
        let (_dir, db) = migrated().await;
        let sqlite = DbBackend::Sqlite;
        for statement in [
            not_done_counts().build(sqlite),
            sqlite.build(&earliest_due_per_service()),
        ] {
            let steps = query_plan(&db, statement).await;
            assert!(
                steps.iter().all(|step| {
                    step.starts_with("SEARCH outbox_jobs USING COVERING INDEX idx_outbox_jobs_due")
                }),
                "{steps:?}"
            );
        }
    }
}
