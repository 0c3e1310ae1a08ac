//! A VFS for SQLite's ingestion connection that writes each commit's WAL frames with one
//! `write` call instead of two calls a frame.
//!
//! SQLite appends a WAL frame as two writes, its 24-byte header and then its page. A frame is
//! 4,120 bytes, so each write also lands across page-cache pages: a commit of `n` frames costs
//! `2n` system calls and about `3n` partial-page writes in the kernel. Under load the
//! ingestion writer is the serial stage of the embedded gateway, and these writes took about
//! a quarter of its time (docs/performance-log.md, *One write a commit*).
//!
//! This VFS wraps the platform's default one and changes one thing: once the ingestion
//! connection links its WAL to its database file ([`gather_wal_writes`]), appends to that WAL
//! are gathered in memory and written in one call when the commit frame's page arrives.
//!
//! What a commit guarantees stays the same. SQLite publishes a commit (writes its WAL-index
//! header, the moment other connections may read it) only after it has written every frame
//! of it, the commit frame last; the write of that frame's page flushes the gathered run, and
//! a failure there fails the commit as a failed write would. So once COMMIT returns, the
//! frames are in the OS page cache, as without this VFS, and a process crash loses nothing
//! committed. Writes never reach the file out of order:
//! - a write that does not continue the gathered run writes the run first, then starts a new
//!   one;
//! - every other call on the WAL (read, sync, truncate, size, lock, file control, close)
//!   writes the run first;
//! - a transaction that spills pages before its commit rewrites some frames' headers after
//!   its commit frame, so a run can be left after the commit frame's page. The ingestion
//!   connection does not spill (`cache_spill=OFF`), and as a safety net the database file's
//!   memory barrier, which SQLite calls just before it publishes a commit, writes the linked
//!   WAL's run. A failed write there cannot be reported to
//!   SQLite, which would publish frames that were never written: the process aborts instead,
//!   before any webhook of that batch is answered.

use std::{
    ffi::{CStr, c_int, c_void},
    mem::{align_of, size_of},
    ptr,
    sync::OnceLock,
};

use rusqlite::{Connection, ffi};

/// The name the VFS is registered under.
pub const NAME: &CStr = c"scenehook-wal";

/// A WAL frame's header: page number, database size after the commit (non-zero only in a
/// commit frame), salts and checksums.
const FRAME_HEADER_BYTES: usize = 24;

/// The most the unix VFS writes in one call: it writes `n & 0x1ffff` bytes of `n` a system
/// call, so a longer write would come back short. 31 pages.
const MAX_WRITE_BYTES: usize = 0x1ffff & !0xfff;

/// A gathered run longer than this is written at once (only a very large transaction gets
/// there), bounding what a connection keeps in memory.
const MAX_RUN_BYTES: usize = 8 << 20;

/// Registers the VFS once, wrapping the default VFS; `Err` carries SQLite's result code.
pub fn register() -> Result<(), c_int> {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    let rc = *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` initializes SQLite and returns a VFS that lives as long
        // as the process. The copy differs in its name, its file size and `xOpen`; every other
        // method of the default (unix) VFS ignores the VFS pointer it is given. The copy is
        // leaked: SQLite keeps using a registered VFS until the process ends.
        unsafe {
            let default = ffi::sqlite3_vfs_find(ptr::null());
            if default.is_null() {
                return ffi::SQLITE_ERROR;
            }
            let mut vfs = *default;
            vfs.szOsFile = (REAL_FILE_OFFSET + (*default).szOsFile as usize) as c_int;
            vfs.pNext = ptr::null_mut();
            vfs.zName = NAME.as_ptr();
            vfs.pAppData = default.cast();
            vfs.xOpen = Some(open);
            ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0)
        }
    });
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Links `connection`'s WAL to its database file, so that the WAL gathers each commit's
/// appends. The connection must have been opened with this VFS and be in WAL mode, its WAL
/// open (after any read); otherwise this changes nothing and returns false.
pub fn gather_wal_writes(connection: &Connection) -> bool {
    // SAFETY: the file controls return the connection's own open files (or leave the pointers
    // null); they are this VFS's only when their methods are ours, which `ours` checks before
    // any cast. The connection is borrowed, so no other thread uses its files meanwhile.
    unsafe {
        let (Some(database), Some(wal)) = (
            ours(file_pointer(connection, ffi::SQLITE_FCNTL_FILE_POINTER)),
            ours(file_pointer(connection, ffi::SQLITE_FCNTL_JOURNAL_POINTER)),
        ) else {
            return false;
        };
        if !(*wal).is_wal || (*database).is_wal {
            return false;
        }
        (*database).peer = wal;
        (*wal).peer = database;
        true
    }
}

/// How many writes `connection`'s WAL has made to its file since it was opened, and how many
/// times the barrier found frames still to write.
#[cfg(test)]
pub fn wal_file_writes(connection: &Connection) -> Option<(u64, u64)> {
    // SAFETY: as in `gather_wal_writes`.
    unsafe {
        ours(file_pointer(connection, ffi::SQLITE_FCNTL_JOURNAL_POINTER))
            .map(|wal| ((*wal).writes, (*wal).flushed_by_barrier))
    }
}

unsafe fn file_pointer(connection: &Connection, op: c_int) -> *mut ffi::sqlite3_file {
    let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: both ops write one `sqlite3_file*` through the pointer given.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            connection.handle(),
            c"main".as_ptr(),
            op,
            (&raw mut file).cast::<c_void>(),
        )
    };
    if rc == ffi::SQLITE_OK {
        file
    } else {
        ptr::null_mut()
    }
}

/// `file` as this VFS's, if it is one (its methods are ours).
unsafe fn ours(file: *mut ffi::sqlite3_file) -> Option<*mut Shim> {
    // SAFETY: a non-null file from SQLite has a readable methods pointer.
    (!file.is_null() && unsafe { ptr::eq((*file).pMethods, &METHODS) }).then(|| file.cast())
}

/// A file of this VFS: SQLite's header, what this VFS keeps, then the default VFS's file at
/// [`REAL_FILE_OFFSET`], in the one allocation of `szOsFile` bytes SQLite makes.
#[repr(C)]
struct Shim {
    header: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    is_wal: bool,
    /// The linked file: a database file's WAL, or a WAL's database file; null when unlinked.
    peer: *mut Shim,
    /// The gathered appends, written at `run_start`.
    run: Vec<u8>,
    run_start: i64,
    /// Where the page of the commit frame whose header is in the run will be written.
    commit_page_at: Option<i64>,
    #[cfg(test)]
    writes: u64,
    #[cfg(test)]
    flushed_by_barrier: u64,
}

const REAL_FILE_OFFSET: usize = size_of::<Shim>().next_multiple_of(align_of::<u64>());

impl Shim {
    fn gathers(&self) -> bool {
        self.is_wal && !self.peer.is_null()
    }

    /// Writes `bytes` at `offset` through the default VFS, in pieces it takes whole.
    unsafe fn write_through(&mut self, bytes: &[u8], offset: i64) -> c_int {
        // SAFETY: `real` is the open file of the default VFS, whose methods include xWrite.
        let write = unsafe { (*(*self.real).pMethods).xWrite.expect("files write") };
        let mut at = offset;
        for piece in bytes.chunks(MAX_WRITE_BYTES) {
            #[cfg(test)]
            {
                self.writes += 1;
            }
            // SAFETY: as above; `piece` holds the bytes given.
            let rc = unsafe { write(self.real, piece.as_ptr().cast(), piece.len() as c_int, at) };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            at += piece.len() as i64;
        }
        ffi::SQLITE_OK
    }

    /// Writes the gathered run, if any, and forgets it (also when the write fails: SQLite then
    /// fails the call that caused the flush, and the frames' commit with it).
    unsafe fn flush(&mut self) -> c_int {
        if self.run.is_empty() {
            return ffi::SQLITE_OK;
        }
        let run = std::mem::take(&mut self.run);
        // SAFETY: as in `write_through`.
        let rc = unsafe { self.write_through(&run, self.run_start) };
        self.run = run;
        self.run.clear();
        self.commit_page_at = None;
        rc
    }

    /// Adds a write to the run, flushing the run first if the write does not continue it,
    /// and after it when it completes a commit or the run grew long.
    unsafe fn gather(&mut self, bytes: &[u8], offset: i64) -> c_int {
        let run_end = self.run_start + self.run.len() as i64;
        if !self.run.is_empty() && offset != run_end {
            // SAFETY: as in `write_through`.
            let rc = unsafe { self.flush() };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if self.run.is_empty() {
            self.run_start = offset;
        }
        self.run.extend_from_slice(bytes);
        let completes_commit = self.commit_page_at == Some(offset);
        if bytes.len() == FRAME_HEADER_BYTES && bytes[4..8] != [0; 4] {
            self.commit_page_at = Some(offset + FRAME_HEADER_BYTES as i64);
        }
        if completes_commit || self.run.len() >= MAX_RUN_BYTES {
            // SAFETY: as in `write_through`.
            return unsafe { self.flush() };
        }
        ffi::SQLITE_OK
    }
}

/// The default VFS's method `$method` of `$shim`'s file, called with `$shim`'s real file and
/// the other arguments; a method the default VFS lacks answers `$missing`.
macro_rules! forward {
    ($shim:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let shim: *mut Shim = $shim;
        let real = (*shim).real;
        match (*(*real).pMethods).$method {
            Some(method) => method(real $(, $arg)*),
            None => $missing,
        }
    }};
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const std::ffi::c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands over `szOsFile` bytes at `file`, aligned for any type, which is
    // room for a `Shim` and the default VFS's file after it; `pAppData` is the default VFS
    // (`register`). A file whose open failed has no methods, and SQLite never closes it.
    unsafe {
        let default: *mut ffi::sqlite3_vfs = (*vfs).pAppData.cast();
        let real: *mut ffi::sqlite3_file = file.cast::<u8>().add(REAL_FILE_OFFSET).cast();
        let open = (*default).xOpen.expect("a VFS opens files");
        let rc = open(default, name, real, flags, out_flags);
        if (*real).pMethods.is_null() {
            (*file).pMethods = ptr::null();
            return rc;
        }
        file.cast::<Shim>().write(Shim {
            header: ffi::sqlite3_file { pMethods: &METHODS },
            real,
            is_wal: flags & ffi::SQLITE_OPEN_WAL != 0,
            peer: ptr::null_mut(),
            run: Vec::new(),
            run_start: 0,
            commit_page_at: None,
            #[cfg(test)]
            writes: 0,
            #[cfg(test)]
            flushed_by_barrier: 0,
        });
        rc
    }
}

// The methods below are SQLite's to call, each with a file `open` made (`Shim`), one call at a
// time per connection.

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see above; the shim is dropped last, and SQLite forgets the file after this.
    unsafe {
        let shim: *mut Shim = file.cast();
        let flushed = (*shim).flush();
        if !(*shim).peer.is_null() {
            (*(*shim).peer).peer = ptr::null_mut();
        }
        let closed = forward!(shim, xClose, ffi::SQLITE_OK);
        ptr::drop_in_place(shim);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buffer: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: see above; SQLite's buffer holds `amount` bytes.
    unsafe {
        let shim: *mut Shim = file.cast();
        let bytes = std::slice::from_raw_parts(buffer.cast::<u8>(), amount as usize);
        if (*shim).gathers() {
            (*shim).gather(bytes, offset)
        } else {
            (*shim).write_through(bytes, offset)
        }
    }
}

/// Defines a method that flushes the run, then calls the default VFS's method.
macro_rules! flush_then_forward {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: see above.
            unsafe {
                let shim: *mut Shim = file.cast();
                let rc = (*shim).flush();
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                forward!(shim, $method, ffi::SQLITE_IOERR $(, $arg)*)
            }
        }
    };
}

flush_then_forward!(read, xRead, (buffer: *mut c_void, amount: c_int, offset: i64));
flush_then_forward!(truncate, xTruncate, (size: i64));
flush_then_forward!(sync, xSync, (flags: c_int));
flush_then_forward!(file_size, xFileSize, (size: *mut i64));
flush_then_forward!(lock, xLock, (level: c_int));
flush_then_forward!(unlock, xUnlock, (level: c_int));
flush_then_forward!(check_reserved_lock, xCheckReservedLock, (reserved: *mut c_int));
flush_then_forward!(file_control, xFileControl, (op: c_int, arg: *mut c_void));

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see above.
    unsafe { forward!(file.cast(), xSectorSize, 4096) }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see above.
    unsafe { forward!(file.cast(), xDeviceCharacteristics, 0) }
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    mapped: *mut *mut c_void,
) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward!(
            file.cast(),
            xShmMap,
            ffi::SQLITE_IOERR,
            page,
            page_size,
            extend,
            mapped
        )
    }
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    count: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: see above.
    unsafe {
        forward!(
            file.cast(),
            xShmLock,
            ffi::SQLITE_IOERR,
            offset,
            count,
            flags
        )
    }
}

/// SQLite calls this on the database file just before it publishes a commit: the linked WAL
/// must hold every frame by then (see the module's comment).
unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: see above; a linked peer is the same connection's open WAL.
    unsafe {
        let shim: *mut Shim = file.cast();
        let wal = (*shim).peer;
        #[cfg(test)]
        if !wal.is_null() && !(*wal).run.is_empty() {
            (*wal).flushed_by_barrier += 1;
        }
        if !wal.is_null() && (*wal).flush() != ffi::SQLITE_OK {
            let message = "scenehook: a WAL write failed right before SQLite published its \
                           commit; aborting so that no reader sees frames that were never written";
            tracing::error!("{message}");
            eprintln!("{message}");
            std::process::abort();
        }
        let real = (*shim).real;
        if let Some(barrier) = (*(*real).pMethods).xShmBarrier {
            barrier(real);
        }
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: see above.
    unsafe { forward!(file.cast(), xShmUnmap, ffi::SQLITE_OK, delete) }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    pages: *mut *mut c_void,
) -> c_int {
    // SAFETY: see above. A fetch the default VFS cannot serve hands back no pages, and SQLite
    // reads instead.
    unsafe {
        let shim: *mut Shim = file.cast();
        let rc = (*shim).flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        *pages = ptr::null_mut();
        forward!(shim, xFetch, ffi::SQLITE_OK, offset, amount, pages)
    }
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    page: *mut c_void,
) -> c_int {
    // SAFETY: see above.
    unsafe { forward!(file.cast(), xUnfetch, ffi::SQLITE_OK, offset, page) }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags, params};

    use super::*;

    /// A connection through this VFS, in WAL mode as ingestion's is, its WAL gathering writes.
    fn gathering(path: &std::path::Path) -> Connection {
        register().unwrap();
        let connection =
            Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
            )
            .unwrap();
        assert!(gather_wal_writes(&connection));
        connection
    }

    fn insert(connection: &Connection, from: i64, count: i64, body_bytes: usize) {
        let txn = connection.unchecked_transaction().unwrap();
        for id in from..from + count {
            txn.execute(
                "INSERT INTO rows (id, body) VALUES (?1, ?2)",
                params![id, "x".repeat(body_bytes)],
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }

    /// What a process killed now would leave: the database and WAL files as the OS has them
    /// (no shared memory), opened by plain SQLite.
    fn crash_image(path: &std::path::Path, dir: &std::path::Path) -> Connection {
        let image = dir.join("image.db");
        std::fs::copy(path, &image).unwrap();
        std::fs::copy(path.with_extension("db-wal"), dir.join("image.db-wal")).unwrap();
        let connection = Connection::open(&image).unwrap();
        let check: String = connection
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        connection
    }

    fn count(connection: &Connection) -> i64 {
        connection
            .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_commit_reaches_the_wal_file_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let connection = gathering(&path);
        insert(&connection, 0, 1, 10);
        let wal_bytes = || {
            std::fs::metadata(path.with_extension("db-wal"))
                .unwrap()
                .len()
        };
        let mut next_id = 1;
        // 2 to ~62 frames: 4 to ~124 writes a commit through the default VFS.
        for rows in [1, 20, 60] {
            let (writes, bytes) = (wal_file_writes(&connection).unwrap().0, wal_bytes());
            insert(&connection, next_id, rows, 3000);
            next_id += rows;
            let appended = (wal_bytes() - bytes) as usize;
            assert_eq!(
                wal_file_writes(&connection).unwrap().0 - writes,
                appended.div_ceil(MAX_WRITE_BYTES) as u64,
                "{rows} rows, {appended} bytes"
            );
        }
    }

    #[test]
    fn every_commit_is_in_the_files_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let connection = gathering(&path);
        let mut committed = 0;
        for (count, body_bytes) in [(1, 10), (3, 5000), (50, 100), (7, 70_000), (200, 300)] {
            insert(&connection, committed, count, body_bytes);
            committed += count;
            assert_eq!(count_of(crash_image(&path, dir.path())), committed);
        }
        // A WAL started over: the next commit writes a new WAL header at its start.
        connection
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .unwrap();
        insert(&connection, committed, 20, 1000);
        committed += 20;
        assert_eq!(count_of(crash_image(&path, dir.path())), committed);
        assert_eq!(count(&connection), committed);
        // Each commit's writes ended with its commit frame, which wrote them.
        assert_eq!(wal_file_writes(&connection).unwrap().1, 0);
    }

    /// A transaction larger than the page cache spills frames before its commit and rewrites
    /// frames' checksums after its commit frame: the barrier writes those before the commit
    /// is published.
    #[test]
    fn a_transaction_that_spills_is_whole_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let connection = gathering(&path);
        connection
            .execute_batch("PRAGMA cache_size=10; PRAGMA cache_spill=ON;")
            .unwrap();
        insert(&connection, 0, 10, 100);
        let txn = connection.unchecked_transaction().unwrap();
        for id in 10..400 {
            txn.execute(
                "INSERT INTO rows (id, body) VALUES (?1, ?2)",
                params![id, "y".repeat(900)],
            )
            .unwrap();
            // Pages written before the spill are written again in the same transaction.
            txn.execute("UPDATE rows SET body = body || 'z' WHERE id < 10", [])
                .unwrap();
        }
        txn.commit().unwrap();
        assert!(wal_file_writes(&connection).unwrap().1 > 0);
        let image = crash_image(&path, dir.path());
        assert_eq!(count(&image), 400);
        let grown: i64 = image
            .query_row(
                "SELECT min(length(body)) FROM rows WHERE id < 10",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(grown, 100 + 390);
    }

    fn count_of(connection: Connection) -> i64 {
        count(&connection)
    }
}
