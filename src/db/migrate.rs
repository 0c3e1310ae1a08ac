//! Applying the migrations, once between instances that start together.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    DatabaseConnection, DbErr, RuntimeErr, SqlxPostgresConnector,
    sqlx::{
        self,
        postgres::{PgConnectOptions, PgPoolOptions},
    },
};

use super::{CONNECT_TIMEOUT, is_postgres};

/// Applies the pending migrations. On Postgres, instances that start together (a fleet's
/// first start) take turns: each holds [`MIGRATIONS_LOCK`] while it migrates, so the next finds
/// nothing pending instead of failing on tables the first has just created. The lock is a
/// session's, and the migrations run on that same session ([`LockedSession`]), outside the
/// pool (which may be one connection): if the connection is lost, the lock goes with it and
/// so do the migrations, instead of going on unlocked beside the next instance's.
///
/// The others poll for the lock rather than wait in `pg_advisory_lock`: a statement waiting
/// holds a snapshot, and a `CREATE INDEX CONCURRENTLY` waits for every older snapshot to go,
/// so the migrating instance would wait for the ones waiting for it.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    run_locked(db, Direction::Up).await
}

/// Rolls back the last `steps` applied migrations, under the same lock as [`migrate`]
/// (`scenehook migrate down N`, to return to an earlier release's schema).
pub async fn roll_back(db: &DatabaseConnection, steps: u32) -> Result<(), DbErr> {
    run_locked(db, Direction::Down(steps)).await
}

enum Direction {
    Up,
    Down(u32),
}

async fn run_locked(db: &DatabaseConnection, direction: Direction) -> Result<(), DbErr> {
    let run = async |db: &DatabaseConnection| match direction {
        Direction::Up => Migrator::up(db, None).await,
        Direction::Down(steps) => Migrator::down(db, Some(steps)).await,
    };
    if !is_postgres(db) {
        // One process owns an SQLite file.
        return run(db).await;
    }
    let options = db.get_postgres_connection_pool().connect_options();
    let session = LockedSession::open(&options).await?;
    let migrated = run(&session.connection).await;
    session.close(migrated).await
}

/// Whether every migration has been applied, for readiness. Read-only: the readiness check
/// creates nothing, not even the migrations' table of a database never migrated.
pub async fn migrations_applied(db: &DatabaseConnection) -> Result<bool, DbErr> {
    Ok(Migrator::get_pending_migrations_read_only(db)
        .await?
        .is_empty())
}

/// Each migration's name and whether it is applied, oldest first (`scenehook migrate status`).
pub async fn migration_status(db: &DatabaseConnection) -> Result<Vec<(String, bool)>, DbErr> {
    Ok(Migrator::get_migration_with_status_read_only(db)
        .await?
        .iter()
        .map(|m| {
            (
                m.name().to_owned(),
                m.status() == migration::MigrationStatus::Applied,
            )
        })
        .collect())
}

/// How often an instance asks again for the lock another is migrating under.
const MIGRATIONS_LOCK_POLL: Duration = Duration::from_millis(100);

/// The Postgres advisory lock an instance holds while it migrates: "scenehok" as a number, so
/// that it does not meet another application's lock on a shared server by chance.
const MIGRATIONS_LOCK: i64 = i64::from_be_bytes(*b"scenehok");

/// A Postgres session that holds [`MIGRATIONS_LOCK`], as the one connection of a pool of its
/// own (sea-orm's migrator takes a pool). Once the lock is held the pool opens no other
/// connection: a replacement for a lost one would run the remaining migrations without the
/// lock, so the migration fails instead. Closing it releases the lock.
struct LockedSession {
    connection: DatabaseConnection,
    lost: Arc<AtomicBool>,
}

impl LockedSession {
    /// Connects and waits for the lock, polling.
    async fn open(options: &PgConnectOptions) -> Result<Self, DbErr> {
        let locked = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // Bounds how long an acquire keeps trying once the session is lost.
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect({
                let (locked, lost) = (locked.clone(), lost.clone());
                move |_, _| {
                    // Before the lock, a lost connection holds nothing and is replaced.
                    let refuse = locked.load(Ordering::Acquire);
                    if refuse {
                        lost.store(true, Ordering::Release);
                    }
                    Box::pin(async move {
                        if refuse {
                            Err(sqlx::Error::Protocol(LOST.into()))
                        } else {
                            Ok(())
                        }
                    })
                }
            })
            .connect_with(options.clone())
            .await
            .map_err(sqlx_err)?;
        let mut waited = false;
        while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATIONS_LOCK)
            .fetch_one(&pool)
            .await
            .map_err(sqlx_err)?
        {
            if !waited {
                tracing::info!("another instance is migrating the database; waiting for it");
                waited = true;
            }
            tokio::time::sleep(MIGRATIONS_LOCK_POLL).await;
        }
        locked.store(true, Ordering::Release);
        Ok(Self {
            connection: SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
            lost,
        })
    }

    /// Ends the session, which releases the lock, and returns `outcome`, saying so when it
    /// failed because the session was lost.
    async fn close(self, outcome: Result<(), DbErr>) -> Result<(), DbErr> {
        // A close that fails drops the socket, which ends the session and its lock all the same.
        drop(self.connection.close().await);
        match outcome {
            Err(e) if self.lost.load(Ordering::Acquire) => {
                Err(DbErr::Custom(format!("{LOST} ({e})")))
            }
            outcome => outcome,
        }
    }
}

const LOST: &str = "the connection holding the migrations' lock was lost; \
                    the migrations stopped there rather than go on without it";

fn sqlx_err(e: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e)))
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Database};

    use super::*;

    /// Once the lock is held, a lost connection is not replaced: statements fail.
    #[tokio::test]
    async fn a_lost_session_is_not_replaced_once_locked() {
        let admin = match std::env::var("SCENEHOOK_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var("SCENEHOOK_REQUIRE_SERVICES").as_deref() == Ok("1") => {
                panic!("SCENEHOOK_TEST_POSTGRES_URL is not set and SCENEHOOK_REQUIRE_SERVICES=1")
            }
            _ => return println!("SKIPPED: SCENEHOOK_TEST_POSTGRES_URL is not set"),
        };
        let server = Database::connect(&admin).await.unwrap();
        let name = format!("t_{}", crate::domain::ids::random_token(12));
        server
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let options: PgConnectOptions = format!("{base}/{name}").parse().unwrap();

        let session = LockedSession::open(&options).await.unwrap();
        let pid: i32 = session
            .connection
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT pg_backend_pid()",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        server
            .execute_unprepared(&format!("SELECT pg_terminate_backend({pid}, 5000)"))
            .await
            .unwrap();
        session
            .connection
            .execute_unprepared("SELECT 1")
            .await
            .expect_err("no statement runs on a session that replaced the locked one");
        let err = session
            .close(Err(DbErr::Custom("a migration failed".into())))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("lock was lost"), "{err}");
    }
}
