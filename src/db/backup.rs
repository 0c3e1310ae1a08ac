//! A consistent copy of the embedded (SQLite) database, taken while the gateway runs.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use sea_orm::DbErr;

/// Writes a copy of the SQLite database at `database` to `target`, which must not exist yet.
/// The gateway may be running: `VACUUM INTO` reads one snapshot (commits still in the WAL
/// included) and writes it out compacted. It writes to `target` with `.partial` appended,
/// syncs that file, then links it as `target`, which fails rather than replace a file that
/// appeared meanwhile: `target` is either a whole copy or absent.
///
/// Ingestion goes on meanwhile. The checkpointer cannot start the WAL over while the copy's
/// read is open, so the WAL may grow past its bound until the copy ends.
pub fn backup_sqlite(database: &Path, target: &Path) -> Result<(), DbErr> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        DbErr::Custom(format!("{what} {}: {e}", path.display()))
    };
    if target.exists() {
        return Err(DbErr::Custom(format!(
            "{} exists; a backup never overwrites a file",
            target.display()
        )));
    }
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = Path::new(&partial);
    // Left by a copy that was cut short.
    match std::fs::remove_file(partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("cannot remove", partial, e));
        }
        _ => {}
    }
    super::configure_sqlite();
    // Without SQLITE_OPEN_CREATE: a missing database is an error, not a new empty one.
    let connection = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| DbErr::Custom(format!("cannot open {}: {e}", database.display())))?;
    // A reader waits only while a checkpoint or a recovery holds the WAL's index.
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| DbErr::Custom(e.to_string()))?;
    let partial_text = partial
        .to_str()
        .ok_or_else(|| DbErr::Custom(format!("{} is not UTF-8", partial.display())))?;
    connection
        .execute("VACUUM INTO ?1", [partial_text])
        .map_err(|e| DbErr::Custom(format!("copying {}: {e}", database.display())))?;
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", partial, e))?;
    std::fs::hard_link(partial, target).map_err(|e| io("cannot write", target, e))?;
    std::fs::remove_file(partial).map_err(|e| io("cannot remove", partial, e))?;
    // The link is durable once the directory is synced.
    let directory = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", directory, e))
}
