//! The database's clock, as this process reads it. The outbox's claims judge due times and
//! leases by the Postgres server's clock (`now()`), which every instance shares; the times an
//! instance writes (a new job's, a retry's, a scene's, the retention's cutoffs) and compares
//! with them are read here, from its own clock corrected by its measured offset to the
//! server's. So an instance whose clock runs ahead does not delay its jobs, nor one that runs
//! behind send them early. SQLite's clock is the host's own: offset zero.
//!
//! One offset a process: a process serves one database.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

/// The server's clock minus this process's, in microseconds.
static OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// The database's time now.
pub fn now() -> DateTime<Utc> {
    let offset = chrono::Duration::microseconds(OFFSET_MICROS.load(Ordering::Relaxed));
    Utc::now()
        .checked_add_signed(offset)
        .unwrap_or_else(Utc::now)
}

/// Samples a measurement takes; the one with the shortest round trip is kept, as the least
/// disturbed by a wait for a core or the pool.
const SAMPLES: usize = 3;

/// Measures how far the Postgres server's clock is from this process's and corrects [`now`]
/// by it from then on; returns the offset. The server's reading is taken to fall at the middle
/// of its round trip, so the error is at most half of it (well under a millisecond on a
/// network a database is used over). On SQLite, nothing to measure: `None`.
pub async fn measure(db: &DatabaseConnection) -> Result<Option<chrono::Duration>, DbErr> {
    if !super::is_postgres(db) {
        return Ok(None);
    }
    let mut best: Option<(chrono::Duration, chrono::Duration)> = None;
    for _ in 0..SAMPLES {
        let sent = Utc::now();
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT clock_timestamp()",
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("clock_timestamp()".into()))?;
        let received = Utc::now();
        let server: DateTime<Utc> = row.try_get_by_index(0)?;
        let round_trip = received - sent;
        let offset = server - (sent + round_trip / 2);
        if best.is_none_or(|(shortest, _)| round_trip < shortest) {
            best = Some((round_trip, offset));
        }
    }
    let offset = best.map_or(chrono::Duration::zero(), |(_, offset)| offset);
    let micros = offset.num_microseconds().unwrap_or(0);
    OFFSET_MICROS.store(micros, Ordering::Relaxed);
    Ok(Some(offset))
}
