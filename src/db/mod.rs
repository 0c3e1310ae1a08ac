//! Database access: connecting (SQLite or Postgres), migrating, and the transactions the
//! pipeline and the outbox run. Each public function is one unit of work.

mod backup;
mod checkpointer;
pub mod clock;
pub mod ingest;
mod migrate;
pub mod outbox;
pub mod pipeline;
pub mod project_counts;
mod wal_vfs;

pub use backup::backup_sqlite;
pub use migrate::{migrate, migration_status, migrations_applied, roll_back};

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
    sea_query::{Alias, Asterisk, IntoColumnRef, Order, Query, SelectStatement, UnionType},
};

use crate::config::Config;

/// SQLite's process-wide settings, applied before its first connection in this process:
/// no memory statistics. Nothing here reads them, and keeping them takes a global mutex around
/// every allocation and free SQLite makes (SQLite's own list of recommended options). Called
/// before every SQLite connection the gateway opens (its pool's, ingestion's).
pub(crate) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rusqlite::ffi;
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. No SQLite connection of this process
        // is opened before this call returns (each is opened after `configure_sqlite`, and
        // `call_once` makes concurrent callers wait), so SQLite is not in use meanwhile; if it
        // was initialized all the same, it refuses with SQLITE_MISUSE and keeps its settings.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int) };
        if rc != ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialized already; its memory statistics stay on"
            );
        }
    });
}

/// Connects with a pool fit for the backend. SQLite gets WAL with `synchronous=NORMAL` (commits
/// are not fsynced one by one) and a single connection: SQLite has one writer anyway.
/// Ingestion has a connection of its own ([`ingest::IngestDb`]). SQLite checkpoints
/// automatically, as fits a process that opens the file alone (the benchmark's seeding).
pub async fn connect(config: &Config) -> Result<DatabaseConnection, DbErr> {
    open_pool(config, PoolRole::Tool).await
}

/// [`connect`] for the gateway, whose SQLite checkpoints are the checkpointer thread's
/// (started with ingestion, [`checkpointer`]): the pool's connection never checkpoints itself.
pub async fn connect_gateway(config: &Config) -> Result<DatabaseConnection, DbErr> {
    open_pool(config, PoolRole::Gateway).await
}

/// How long opening a connection to Postgres may take, for the pools and the ingestion
/// writers' own connections alike.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a pool is for, where that changes its connections' settings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PoolRole {
    /// A process that opens the database on its own (migrations, the benchmark's seeding).
    Tool,
    Gateway,
}

async fn open_pool(config: &Config, role: PoolRole) -> Result<DatabaseConnection, DbErr> {
    crate::install_crypto_provider();
    let url = &config.database_url;
    if url.starts_with("sqlite:") {
        configure_sqlite();
    }
    if let Some(path) = sqlite_file(url)
        && let Some(dir) = std::path::Path::new(&path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut options = ConnectOptions::new(url.clone());
    options
        .acquire_timeout(Duration::from_millis(config.database.acquire_timeout_ms))
        .connect_timeout(CONNECT_TIMEOUT)
        // No reaper: sqlx 0.9.0's pool maintenance task can read a transiently wrapped idle
        // count and spin a worker at 100 % CPU for good (sqlx#3645, fixed upstream in #4289,
        // not in a release yet); seen here once in a benchmark's seeding process. Connections
        // are kept instead of recycled, and a broken one is found when it is next used.
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        // A connection in steady use is not pinged before each use (a round trip per batch);
        // one that sat idle is.
        .test_before_acquire_if_idle_for(Duration::from_secs(1))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        options
            .max_connections(1)
            .min_connections(1)
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // A multi-row statement inside a transaction keeps a statement journal;
                    // in memory it is not written to a temporary file and read back.
                    .pragma("temp_store", "memory")
                    .pragma(
                        "wal_autocheckpoint",
                        if role == PoolRole::Tool { "1000" } else { "0" },
                    )
            });
    } else {
        options.max_connections(config.database.max_connections);
    }
    Database::connect(options).await
}

/// The file a `sqlite:` URL names; `None` for an in-memory database.
pub fn sqlite_file(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    let in_memory = path.is_empty() || path == ":memory:" || url.contains("mode=memory");
    (!in_memory).then(|| path.to_owned())
}

/// Deletes delivery rows and done outbox jobs past their retention; returns how many of each.
/// Safe on every instance at once. Rows go [`PRUNE_CHUNK`] at a time, each chunk a transaction
/// of its own ([`in_chunks`]).
///
/// Deliveries have no index by age (each webhook would append to it). Their ids grow with
/// time, so the ones to delete come before the first delivery young enough to keep, which a
/// binary search over ids finds in a few lookups ([`first_delivery_kept`]); each chunk then
/// deletes the oldest ids before it, checking their age too. Done jobs:
/// [`outbox::prune_done`].
pub async fn prune(
    db: &DatabaseConnection,
    delivery_retention: Duration,
    done_job_retention: Duration,
) -> Result<(u64, u64), DbErr> {
    // An age beyond what a timestamp holds keeps everything.
    let before = |age: Duration| {
        chrono::Duration::from_std(age)
            .ok()
            .and_then(|age| clock::now().checked_sub_signed(age))
            .unwrap_or(chrono::DateTime::UNIX_EPOCH)
    };
    let deliveries = prune_deliveries(db, before(delivery_retention)).await?;
    let jobs = outbox::prune_done(db, before(done_job_retention)).await?;
    Ok((deliveries, jobs))
}

async fn prune_deliveries(
    db: &DatabaseConnection,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<u64, DbErr> {
    let Some(first_kept) = first_delivery_kept(db, cutoff).await? else {
        return Ok(0);
    };
    in_chunks(|| {
        let chunk = Statement::from_sql_and_values(
            db.get_database_backend(),
            DELETE_DELIVERIES_BEFORE,
            [
                first_kept.into(),
                cutoff.into(),
                (PRUNE_CHUNK as i64).into(),
            ],
        );
        async move { Ok(db.execute_raw(chunk).await?.rows_affected()) }
    })
    .await
}

/// The oldest `$3` deliveries with ids before `$1` received before `$2`. The age is checked
/// again because ids follow time only as far as clocks do, and because SQLite numbers a row
/// after the largest id left: once retention has emptied the table, a new delivery starts
/// again at 1, below `$1`.
const DELETE_DELIVERIES_BEFORE: &str = "DELETE FROM webhook_deliveries WHERE id IN \
     (SELECT id FROM webhook_deliveries WHERE id < $1 AND received_at < $2 ORDER BY id LIMIT $3)";

/// Where the deliveries to keep begin: the lowest id whose delivery (or the next one after it)
/// was received at `cutoff` or later, one past the newest if every one is older; `None` if
/// there are none. A binary search over ids, a lookup by id per step, so the read stays short
/// however many rows expired. Were stamps out of order (a clock set back), it may stop a
/// little early or late; the delete checks each row's age, so no young delivery goes.
async fn first_delivery_kept(
    db: &DatabaseConnection,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<Option<i64>, DbErr> {
    let backend = db.get_database_backend();
    let range = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT MIN(id), MAX(id) FROM webhook_deliveries",
        ))
        .await?;
    let Some((Some(mut low), Some(newest))) = range
        .map(|row| {
            Ok::<_, DbErr>((
                row.try_get_by_index::<Option<i64>>(0)?,
                row.try_get_by_index::<Option<i64>>(1)?,
            ))
        })
        .transpose()?
    else {
        return Ok(None);
    };
    let mut high = newest + 1;
    while low < high {
        let middle = low + (high - low) / 2;
        let next = db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                "SELECT id, CASE WHEN received_at < $1 THEN 1 ELSE 0 END \
                 FROM webhook_deliveries WHERE id >= $2 ORDER BY id LIMIT 1",
                [cutoff.into(), middle.into()],
            ))
            .await?
            .map(|row| {
                Ok::<_, DbErr>((
                    row.try_get_by_index::<i64>(0)?,
                    row.try_get_by_index::<i32>(1)? == 1,
                ))
            })
            .transpose()?;
        match next {
            Some((id, true)) => low = id + 1,
            // Young, or gone since the range was read (another instance's retention).
            _ => high = middle,
        }
    }
    Ok(Some(low))
}

/// The most rows a retention statement deletes. On SQLite the webhooks' writer waits for the
/// write lock while one runs: a chunk holds it for milliseconds, where an hour's expired rows
/// at once (millions, at a few thousand webhooks a second) would hold it for many seconds.
pub const PRUNE_CHUNK: u64 = 1_000;

/// Runs `chunk` (a statement changing at most [`PRUNE_CHUNK`] rows) until it changes fewer,
/// with a pause between in which ingestion's batches commit; returns how many rows it changed.
async fn in_chunks<Chunk>(mut chunk: impl FnMut() -> Chunk) -> Result<u64, DbErr>
where
    Chunk: Future<Output = Result<u64, DbErr>>,
{
    const PAUSE: Duration = Duration::from_millis(5);
    let mut total = 0;
    loop {
        let changed = chunk().await?;
        total += changed;
        if changed < PRUNE_CHUNK {
            return Ok(total);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// A migrated SQLite database in `dir` for unit tests: its configuration and the gateway's
/// connection to it.
#[cfg(test)]
pub(crate) async fn migrated_sqlite(dir: &std::path::Path) -> (Config, DatabaseConnection) {
    let mut config = Config::defaults();
    config.database_url = format!("sqlite://{}/test.db?mode=rwc", dir.display());
    let db = connect(&config).await.unwrap();
    migrate(&db).await.unwrap();
    (config, db)
}

/// The gateway's connection to a migrated SQLite database in a directory of its own, removed
/// when the directory is dropped. For unit tests.
#[cfg(test)]
pub(crate) async fn migrated() -> (tempfile::TempDir, DatabaseConnection) {
    let dir = tempfile::tempdir().unwrap();
    let (_, db) = migrated_sqlite(dir.path()).await;
    (dir, db)
}

/// Inserts projects, each `(id, status, creation time as stored)`, straight into the table.
/// For unit tests.
#[cfg(test)]
pub(crate) async fn insert_projects(
    db: &DatabaseConnection,
    projects: impl IntoIterator<Item = (String, crate::domain::ProjectStatus, String)>,
) {
    let rows: Vec<String> = projects
        .into_iter()
        .map(|(id, status, at)| format!("('{id}', '{id}', '{status}', 0, '{at}', '{at}')"))
        .collect();
    db.execute_unprepared(&format!(
        "INSERT INTO projects (id, name, status, stitch_attempts, created_at, updated_at) \
         VALUES {}",
        rows.join(", ")
    ))
    .await
    .unwrap();
}

/// The steps of `statement`'s SQLite plan that read a table or an index, or sort, each with
/// the statement's SQL for failure messages. For unit tests.
#[cfg(test)]
pub(crate) async fn query_plan(db: &DatabaseConnection, statement: Statement) -> Vec<String> {
    let explain = Statement::from_sql_and_values(
        DbBackend::Sqlite,
        format!("EXPLAIN QUERY PLAN {}", statement.sql),
        statement.values.clone().map(|v| v.0).unwrap_or_default(),
    );
    db.query_all_raw(explain)
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_by_index::<String>(3).unwrap())
        .filter(|step| {
            ["SCAN", "SEARCH", "USE TEMP"]
                .iter()
                .any(|s| step.starts_with(s))
        })
        .map(|step| format!("{step} ({})", statement.sql))
        .collect()
}

/// The latest `limit` rows of several index ranges (`arms`, each already ordered by `column`
/// descending and limited): each read as a subquery of its own, as SQLite takes no ORDER BY
/// or LIMIT on a compound's own arms, joined by `UNION ALL`, and those few rows ordered by
/// `column` again and limited. Every arm reads its index backwards and stops at the limit,
/// where one query ordered by `column` over all of them would sort every row they hold.
pub(crate) fn latest_across(
    arms: impl IntoIterator<Item = SelectStatement>,
    column: impl IntoColumnRef,
    limit: u64,
) -> SelectStatement {
    let arms = arms.into_iter().enumerate().map(|(n, arm)| {
        Query::select()
            .column(Asterisk)
            .from_subquery(arm, Alias::new(format!("arm{n}")))
            .to_owned()
    });
    Query::select()
        .column(Asterisk)
        .from_subquery(union_all(arms), Alias::new("latest"))
        .order_by(column, Order::Desc)
        .limit(limit)
        .to_owned()
}

/// The rows of `E` that `query` selects (a query built with sea-query, such as
/// [`latest_across`]).
pub(crate) async fn rows_of<E: sea_orm::EntityTrait>(
    db: &DatabaseConnection,
    query: &SelectStatement,
) -> Result<Vec<E::Model>, DbErr> {
    let statement = db.get_database_backend().build(query);
    E::find().from_raw_sql(statement).all(db).await
}

/// `queries` joined by `UNION ALL`: every caller passes one at least (a query per service,
/// per service and status, or per project status).
pub(crate) fn union_all(queries: impl IntoIterator<Item = SelectStatement>) -> SelectStatement {
    let mut queries = queries.into_iter();
    let mut union = queries.next().expect("a union of one query at least");
    for query in queries {
        union.union(UnionType::All, query);
    }
    union
}

/// Whether `steps` (a [`query_plan`]) is a [`latest_across`] listing as it should run: `arms`
/// searches along `search`, no scan of `table`, and no sort but of an arm's results, read from
/// its subquery. For unit tests.
#[cfg(test)]
pub(crate) fn reads_each_arm_and_stops(
    steps: &[String],
    search: &str,
    arms: usize,
    table: &str,
) -> bool {
    let searches = steps.iter().filter(|step| step.starts_with(search)).count();
    let sorts_of_arms = steps
        .windows(2)
        .all(|pair| !pair[1].starts_with("USE TEMP") || pair[0].starts_with("SCAN arm"));
    let scan = format!("SCAN {table}");
    searches == arms && sorts_of_arms && !steps.iter().any(|step| step.starts_with(&scan))
}

pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}

/// Whether `err` means the database cannot be reached (rather than a statement failing), so
/// the caller should retry later.
pub fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(e) | DbErr::Query(e) => {
            if let RuntimeErr::SqlxError(e) = e
                && lost_connection(e)
            {
                return true;
            }
            let message = e.to_string().to_ascii_lowercase();
            [
                "connection",
                "pool timed out",
                "broken pipe",
                "database is locked",
                "io error",
                "closed",
            ]
            .iter()
            .any(|needle| message.contains(needle))
        }
        _ => false,
    }
}

/// Begins a read-write transaction. On SQLite it takes the write lock at once (`IMMEDIATE`):
/// ingestion writes through a connection of its own, and a transaction that read first and
/// wrote second would fail outright, instead of waiting its turn, if that one committed in
/// between.
pub async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Whether sqlx failed for want of a working connection rather than on a statement.
fn lost_connection(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => true,
        // Postgres: connection exceptions (class 08), the server shutting down or starting
        // (57P01-57P03).
        E::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

pub fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_lost_connection_is_unavailable_and_a_refused_statement_is_not() {
        let sqlx = |e| DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)));
        // What a statement on a connection whose server went away fails with.
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 5 bytes, got 0 bytes at EOF",
        );
        assert!(is_unavailable(&sqlx(sea_orm::sqlx::Error::Io(eof))));
        assert!(is_unavailable(&sqlx(sea_orm::sqlx::Error::PoolTimedOut)));
        assert!(!is_unavailable(&sqlx(sea_orm::sqlx::Error::RowNotFound)));
        assert!(!is_unavailable(&DbErr::Exec(RuntimeErr::Internal(
            "refused delivery".into()
        ))));
        assert!(is_unavailable(&DbErr::Exec(RuntimeErr::Internal(
            "database is locked".into()
        ))));
    }

    /// `.cargo/config.toml` builds SQLite without SQLITE_ENABLE_MEMORY_MANAGEMENT. With it, all
    /// connections share one page-cache group, and a scrape's reads can leave the ingestion
    /// writer without a cache (docs/performance-log.md, *The slow second run*).
    #[test]
    fn sqlite_gives_each_connection_its_own_page_cache() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let mut statement = connection.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options
                .iter()
                .any(|option| option.starts_with("THREADSAFE="))
        );
        assert!(
            !options.contains(&"ENABLE_MEMORY_MANAGEMENT".to_owned()),
            "{options:?}"
        );
    }
}
