//! Outbox queries. A claim moves due jobs to `in_flight` with a lease (`next_attempt_at` is
//! the lease's end) and bumps `attempts`, which doubles as a fencing token: a worker whose
//! lease expired and was re-claimed elsewhere can no longer complete or reschedule the job.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use entity::outbox_job;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement, sea_query::Expr,
};

/// Claims up to `limit` due jobs of `service`: pending ones whose time has come and in-flight
/// ones whose lease expired (their instance died). Two instances never claim the same job:
/// Postgres skips rows another claim has locked, SQLite runs one write at a time.
pub async fn claim(
    db: &DatabaseConnection,
    service: &str,
    limit: u64,
    lease: std::time::Duration,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    let now = Utc::now();
    let lease_until = now + ChronoDuration::from_std(lease).unwrap_or(ChronoDuration::seconds(30));
    let backend = db.get_database_backend();
    let sql = if super::is_postgres(db) {
        "UPDATE outbox_jobs SET status = 'in_flight', attempts = attempts + 1, \
         next_attempt_at = $1, updated_at = $2 \
         WHERE id IN (SELECT id FROM outbox_jobs WHERE service = $3 \
           AND status IN ('pending', 'in_flight') AND next_attempt_at <= $2 \
           ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING *"
    } else {
        "UPDATE outbox_jobs SET status = 'in_flight', attempts = attempts + 1, \
         next_attempt_at = $1, updated_at = $2 \
         WHERE id IN (SELECT id FROM outbox_jobs WHERE service = $3 \
           AND status IN ('pending', 'in_flight') AND next_attempt_at <= $2 \
           ORDER BY next_attempt_at LIMIT $4) \
         RETURNING *"
    };
    outbox_job::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            backend,
            sql,
            [
                lease_until.into(),
                now.into(),
                service.into(),
                (limit as i64).into(),
            ],
        ))
        .all(db)
        .await
}

/// Updates a claimed job if this worker still holds it (same attempt number, still in flight).
async fn settle(
    db: &DatabaseConnection,
    job: &outbox_job::Model,
    status: &str,
    next_attempt_at: DateTime<Utc>,
    attempts: i32,
    last_error: Option<String>,
) -> Result<bool, DbErr> {
    let result = outbox_job::Entity::update_many()
        .col_expr(outbox_job::Column::Status, Expr::value(status))
        .col_expr(
            outbox_job::Column::NextAttemptAt,
            Expr::value(next_attempt_at),
        )
        .col_expr(outbox_job::Column::Attempts, Expr::value(attempts))
        .col_expr(outbox_job::Column::LastError, Expr::value(last_error))
        .col_expr(outbox_job::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(outbox_job::Column::Id.eq(job.id.as_str()))
        .filter(outbox_job::Column::Status.eq("in_flight"))
        .filter(outbox_job::Column::Attempts.eq(job.attempts))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

pub async fn complete(db: &DatabaseConnection, job: &outbox_job::Model) -> Result<bool, DbErr> {
    settle(db, job, "done", Utc::now(), job.attempts, None).await
}

/// Schedules the next attempt after `delay`.
pub async fn retry_later(
    db: &DatabaseConnection,
    job: &outbox_job::Model,
    delay: std::time::Duration,
    error: String,
) -> Result<bool, DbErr> {
    let at = Utc::now() + ChronoDuration::from_std(delay).unwrap_or(ChronoDuration::seconds(60));
    settle(db, job, "pending", at, job.attempts, Some(error)).await
}

/// Puts a job back without counting the attempt (its breaker was open, or we shut down).
pub async fn release(
    db: &DatabaseConnection,
    job: &outbox_job::Model,
    delay: std::time::Duration,
) -> Result<bool, DbErr> {
    let at = Utc::now() + ChronoDuration::from_std(delay).unwrap_or(ChronoDuration::seconds(1));
    settle(
        db,
        job,
        "pending",
        at,
        job.attempts - 1,
        job.last_error.clone(),
    )
    .await
}

pub async fn kill(
    db: &DatabaseConnection,
    job: &outbox_job::Model,
    error: String,
) -> Result<bool, DbErr> {
    settle(db, job, "dead", Utc::now(), job.attempts, Some(error)).await
}

pub async fn list(
    db: &DatabaseConnection,
    status: Option<&str>,
    service: Option<&str>,
    limit: u64,
) -> Result<Vec<outbox_job::Model>, DbErr> {
    let mut query = outbox_job::Entity::find()
        .order_by_desc(outbox_job::Column::UpdatedAt)
        .limit(limit);
    if let Some(status) = status {
        query = query.filter(outbox_job::Column::Status.eq(status));
    }
    if let Some(service) = service {
        query = query.filter(outbox_job::Column::Service.eq(service));
    }
    query.all(db).await
}

/// Re-queues dead jobs (one, or all of a service) with a fresh set of attempts.
pub async fn replay(
    db: &DatabaseConnection,
    id: Option<&str>,
    service: Option<&str>,
) -> Result<u64, DbErr> {
    let now = Utc::now();
    let mut update = outbox_job::Entity::update_many()
        .col_expr(outbox_job::Column::Status, Expr::value("pending"))
        .col_expr(outbox_job::Column::Attempts, Expr::value(0))
        .col_expr(outbox_job::Column::NextAttemptAt, Expr::value(now))
        .col_expr(outbox_job::Column::UpdatedAt, Expr::value(now))
        .filter(outbox_job::Column::Status.eq("dead"));
    if let Some(id) = id {
        update = update.filter(outbox_job::Column::Id.eq(id));
    }
    if let Some(service) = service {
        update = update.filter(outbox_job::Column::Service.eq(service));
    }
    Ok(update.exec(db).await?.rows_affected)
}

pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<outbox_job::Model>, DbErr> {
    outbox_job::Entity::find_by_id(id.to_owned()).one(db).await
}

/// Job counts by service and status, and the age of the oldest due pending job.
pub struct OutboxStats {
    pub counts: Vec<(String, String, i64)>,
    pub oldest_pending_secs: f64,
}

pub async fn stats(db: &DatabaseConnection) -> Result<OutboxStats, DbErr> {
    #[derive(FromQueryResult)]
    struct Count {
        service: String,
        status: String,
        n: i64,
    }
    let backend = db.get_database_backend();
    let counts = Count::find_by_statement(Statement::from_string(
        backend,
        "SELECT service, status, COUNT(*) AS n FROM outbox_jobs \
         WHERE status <> 'done' GROUP BY service, status",
    ))
    .all(db)
    .await?;
    let oldest = outbox_job::Entity::find()
        .filter(outbox_job::Column::Status.eq("pending"))
        .order_by_asc(outbox_job::Column::CreatedAt)
        .one(db)
        .await?;
    let oldest_pending_secs = oldest
        .map(|j| (Utc::now() - j.created_at).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok(OutboxStats {
        counts: counts
            .into_iter()
            .map(|c| (c.service, c.status, c.n))
            .collect(),
        oldest_pending_secs,
    })
}
