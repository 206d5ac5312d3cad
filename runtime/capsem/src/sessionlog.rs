//! The per-session log: one SQLite database per `capsem run`/`shell`, holding the session's
//! metadata and every proxied request, DNS question and exec, and its reading side
//! (`capsem logs`).
//!
//! **Writing.** [`SessionLog::create`] makes `<sessions dir>/<id>.db` (file 0600, directory 0700)
//! with the full schema and the `session` row, built under a temporary name and linked into place
//! so that a reader never sees a half-made log. The id is sortable: the start time in UTC
//! (`YYYYMMDDTHHMMSSZ`) + `-` + 6 random hex digits. Events go through an unbounded channel to one
//! writer thread that owns the connection (WAL mode) and commits them in batches (what arrived within
//! a short gathering window), so the proxy's
//! async tasks never wait on the disk: [`EventSink::request`]/[`EventSink::dns`] and
//! [`SessionLog::record_exec`] only enqueue. A write that fails is counted, and [`SessionLog::flush`]
//! and [`SessionLog::finish`] report it. `finish` writes every event queued so far, sets `ended` and
//! `exit_status` and closes the database; events sent after it are dropped and counted by
//! [`SessionLog::dropped_events`] — stop the producers first. The channel is unbounded on purpose
//! (a full queue would have to block the proxy or lose events): a stalled disk costs memory.
//!
//! **Reading.** [`list_sessions`], [`read_session`] (by unique id prefix; the latest without one)
//! and the renderers [`render_text`], [`render_json`], [`render_list`], [`render_list_json`];
//! [`logs_command`] is the whole `capsem logs` subcommand. Readers open the databases read-only.
//!
//! Times are stored as RFC 3339 UTC with milliseconds (`2025-01-02T03:04:05.678Z`; the private
//! `time` module), which sorts as text; rendering lives in the private `render` module.
//! Retention ([`prune`] with [`Retention`]) removes the logs older than the image's
//! `retention_days`, then the oldest beyond `max_sessions` or `max_disk_gb`, at each session's
//! start.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};
use serde_json::Value;

use crate::egress::{DnsRecord, EventSink, RequestRecord};

mod render;
mod retention;
mod time;

pub use render::{render_event, render_json, render_list, render_list_json, render_text};
pub use retention::{Retention, prune};
pub use time::{format_time, parse_time};

/// The database layout version, stored in SQLite's `user_version`.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE session (
    id          TEXT PRIMARY KEY NOT NULL,
    started     TEXT NOT NULL,
    ended       TEXT,
    image       TEXT NOT NULL,
    version     TEXT NOT NULL,
    assets      TEXT NOT NULL,
    command     TEXT NOT NULL, -- JSON array of strings
    hypervisor  TEXT NOT NULL,
    exit_status TEXT
);
CREATE TABLE requests (
    time      TEXT NOT NULL,
    method    TEXT NOT NULL,
    host      TEXT NOT NULL,
    path      TEXT NOT NULL,
    allowed   INTEGER NOT NULL,
    rule      TEXT NOT NULL,
    status    INTEGER NOT NULL,
    bytes_in  INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL
);
CREATE TABLE dns (
    time     TEXT NOT NULL,
    name     TEXT NOT NULL,
    qtype    TEXT NOT NULL,
    answered INTEGER NOT NULL
);
CREATE TABLE execs (
    time        TEXT NOT NULL,
    argv        TEXT NOT NULL, -- JSON array of strings
    exit_status TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
);
";

/// Events committed per transaction at most.
const BATCH: usize = 4096;
/// After waking for an event, the writer lets this long pass before draining the queue, so a
/// burst becomes one transaction and the producers' sends find no sleeping reader to wake (at
/// 40 000 requests/s, committing whatever had queued meant small transactions and a futex wake
/// per request, a fifth of the proxy's CPU). A flush or finish waits at most this much longer.
const GATHER: Duration = Duration::from_millis(20);

/// Errors of the session log; each names the file, directory or id it is about.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create the sessions directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot create the session log {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("cannot start the session log writer for {}: {source}", path.display())]
    SpawnWriter { path: PathBuf, source: io::Error },
    #[error("cannot read the sessions directory {}: {source}", path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("no sessions in {}", dir.display())]
    NoSessions { dir: PathBuf },
    #[error("no session matches {id:?} in {}", dir.display())]
    UnknownSession { id: String, dir: PathBuf },
    #[error("{prefix:?} matches {} sessions: {}; give more of the id", candidates.len(), candidates.join(", "))]
    AmbiguousSession { prefix: String, candidates: Vec<String> },
    #[error("session log {}: {source}", path.display())]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("session log {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{} is not a capsem session log of schema version {expected} (found version {found})", path.display())]
    UnsupportedSchema { path: PathBuf, found: i64, expected: i64 },
    #[error("session log {}: {failed} event(s) could not be written (first error: {first})", path.display())]
    WriteFailed { path: PathBuf, failed: u64, first: String },
    #[error("session log {}: the writer thread stopped unexpectedly", path.display())]
    WriterGone { path: PathBuf },
    #[error("session {id} is already finished")]
    Finished { id: String },
    #[error("--list takes no session id (got {id:?})")]
    ListWithSession { id: String },
}

/// What a new session records about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    /// Image name.
    pub image: String,
    /// Image version.
    pub version: String,
    /// The verified assets directory the VM booted from (stored lossily as UTF-8).
    pub assets_dir: PathBuf,
    /// The command run in the guest (empty for an interactive shell).
    pub command: Vec<String>,
    /// The hypervisor backend (`qemu`, `kvm`, `vz`).
    pub hypervisor: String,
}

/// One command executed in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    /// When it started.
    pub time: SystemTime,
    pub argv: Vec<String>,
    /// How it ended, as text (`0`, `1`, `signal 9`, `timeout`…).
    pub exit_status: String,
    /// Stored in whole milliseconds.
    pub duration: Duration,
}

/// One logged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Request(RequestRecord),
    Dns(DnsRecord),
    Exec(ExecRecord),
}

impl Event {
    pub fn time(&self) -> SystemTime {
        match self {
            Event::Request(r) => r.time,
            Event::Dns(d) => d.time,
            Event::Exec(e) => e.time,
        }
    }
}

/// A session's own row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    /// The database file.
    pub path: PathBuf,
    pub started: SystemTime,
    /// `None` while running, or when `capsem` died before finishing the log.
    pub ended: Option<SystemTime>,
    pub image: String,
    pub version: String,
    pub assets: String,
    pub command: Vec<String>,
    pub hypervisor: String,
    pub exit_status: Option<String>,
}

/// A whole session read back: its row and all events in time order (ties: DNS, request, exec,
/// then the order they were written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDump {
    pub info: SessionInfo,
    pub events: Vec<Event>,
}

/// One line of `capsem logs --list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: String,
    pub started: SystemTime,
    pub ended: Option<SystemTime>,
    pub image: String,
    pub version: String,
    pub command: Vec<String>,
    pub exit_status: Option<String>,
    /// Number of requests.
    pub requests: u64,
    /// Of which denied.
    pub denied: u64,
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

enum Msg {
    Event(Event),
    Flush(SyncSender<Result<(), LogError>>),
    Finish { time: SystemTime, exit_status: String, ack: SyncSender<Result<(), LogError>> },
    Close,
}

/// An open session log. Share it as `Arc<SessionLog>` (it is also an `Arc<dyn EventSink>`).
/// Dropping it without [`SessionLog::finish`] writes the queued events and leaves `ended` unset.
#[derive(Debug)]
pub struct SessionLog {
    id: String,
    path: PathBuf,
    tx: Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Events sent / events the writer took (written or failed).
    sent: AtomicU64,
    taken: Arc<AtomicU64>,
}

impl SessionLog {
    /// Starts a session log now.
    pub fn create(sessions_dir: &Path, meta: SessionMeta) -> Result<SessionLog, LogError> {
        SessionLog::create_at(sessions_dir, meta, SystemTime::now())
    }

    /// Starts a session log that began at `started` (which also names it).
    pub fn create_at(sessions_dir: &Path, meta: SessionMeta, started: SystemTime) -> Result<SessionLog, LogError> {
        let dir_err = |source| LogError::CreateDir { path: sessions_dir.to_path_buf(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(sessions_dir).map_err(dir_err)?;
        fs::set_permissions(sessions_dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;

        let mut attempt = 0;
        let (id, path) = loop {
            attempt += 1;
            let id = new_id(started);
            match create_db(sessions_dir, &id, &meta, started) {
                Ok(path) => break (id, path),
                Err(CreateDbError::Taken) if attempt < 16 => continue,
                Err(CreateDbError::Taken) => {
                    let path = sessions_dir.join(format!("{id}.db"));
                    let source = io::Error::new(io::ErrorKind::AlreadyExists, "no free session id");
                    return Err(LogError::CreateFile { path, source });
                }
                Err(CreateDbError::Log(e)) => return Err(e),
            }
        };

        let sql = |source| LogError::Sqlite { path: path.clone(), source };
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LogError::Corrupt { path, detail: format!("cannot switch to WAL mode (journal mode {mode})") });
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;

        let (tx, rx) = mpsc::channel();
        let taken = Arc::new(AtomicU64::new(0));
        let state = WriteState { path: path.clone(), failed: 0, first: None, taken: taken.clone() };
        let handle = std::thread::Builder::new()
            .name("capsem-sessionlog".into())
            .spawn(move || write_loop(conn, rx, state))
            .map_err(|source| LogError::SpawnWriter { path: path.clone(), source })?;
        Ok(SessionLog { id, path, tx, writer: Mutex::new(Some(handle)), sent: AtomicU64::new(0), taken })
    }

    /// The session id (the file name without `.db`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// After [`SessionLog::finish`]: the events that came too late to be written. (Before it,
    /// this also counts the events still queued.)
    pub fn dropped_events(&self) -> u64 {
        self.sent.load(Ordering::SeqCst).saturating_sub(self.taken.load(Ordering::SeqCst))
    }

    fn send(&self, event: Event) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Event(event));
    }

    /// Records an exec that just ended after running for `duration` (its time is now − duration).
    pub fn record_exec(&self, argv: &[String], exit_status: &str, duration: Duration) {
        let now = SystemTime::now();
        let time = now.checked_sub(duration).unwrap_or(now);
        self.exec(ExecRecord { time, argv: argv.to_vec(), exit_status: exit_status.to_owned(), duration });
    }

    /// Records an exec with its own start time.
    pub fn exec(&self, record: ExecRecord) {
        self.send(Event::Exec(record));
    }

    /// Blocks until every event sent before it is committed; reports failed writes so far.
    /// Not for async tasks.
    pub fn flush(&self) -> Result<(), LogError> {
        let (ack, done) = mpsc::sync_channel(1);
        self.tx.send(Msg::Flush(ack)).map_err(|_| LogError::Finished { id: self.id.clone() })?;
        done.recv().map_err(|_| LogError::WriterGone { path: self.path.clone() })?
    }

    /// Ends the session now with `exit_status` (e.g. `0`, `signal 9`).
    pub fn finish(&self, exit_status: &str) -> Result<(), LogError> {
        self.finish_at(SystemTime::now(), exit_status)
    }

    /// Ends the session at `time`: writes every queued event, sets `ended` and `exit_status`,
    /// closes the database. Reports events that could not be written during the session.
    pub fn finish_at(&self, time: SystemTime, exit_status: &str) -> Result<(), LogError> {
        let (ack, done) = mpsc::sync_channel(1);
        let msg = Msg::Finish { time, exit_status: exit_status.to_owned(), ack };
        self.tx.send(msg).map_err(|_| LogError::Finished { id: self.id.clone() })?;
        let result = done.recv().map_err(|_| LogError::WriterGone { path: self.path.clone() });
        self.join();
        result?
    }

    fn join(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl EventSink for SessionLog {
    fn request(&self, record: RequestRecord) {
        self.send(Event::Request(record));
    }

    fn dns(&self, record: DnsRecord) {
        self.send(Event::Dns(record));
    }
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Close);
        self.join();
    }
}

enum CreateDbError {
    /// That id is in use; try another.
    Taken,
    Log(LogError),
}

/// Builds `.<id>.db.tmp` (0600) with the schema and session row, then links it to `<id>.db`.
fn create_db(dir: &Path, id: &str, meta: &SessionMeta, started: SystemTime) -> Result<PathBuf, CreateDbError> {
    let path = dir.join(format!("{id}.db"));
    let tmp = dir.join(format!(".{id}.db.tmp"));
    if path.exists() {
        return Err(CreateDbError::Taken);
    }
    let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp);
    match file {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(CreateDbError::Taken),
        Err(source) => return Err(CreateDbError::Log(LogError::CreateFile { path: tmp, source })),
    }
    let result = init_db(&tmp, id, meta, started).and_then(|()| match fs::hard_link(&tmp, &path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CreateDbError::Taken),
        Err(source) => Err(CreateDbError::Log(LogError::CreateFile { path: path.clone(), source })),
    });
    let _ = fs::remove_file(&tmp);
    result.map(|()| path)
}

fn init_db(tmp: &Path, id: &str, meta: &SessionMeta, started: SystemTime) -> Result<(), CreateDbError> {
    let sql = |source| CreateDbError::Log(LogError::Sqlite { path: tmp.to_path_buf(), source });
    let conn = Connection::open_with_flags(tmp, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sql)?;
    let command = serde_json::to_string(&meta.command).unwrap_or_else(|_| "[]".into());
    let batch = format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};");
    conn.execute_batch(&batch).map_err(sql)?;
    conn.execute(
        "INSERT INTO session (id, started, image, version, assets, command, hypervisor) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            format_time(started),
            meta.image,
            meta.version,
            meta.assets_dir.to_string_lossy(),
            command,
            meta.hypervisor
        ],
    )
    .map_err(sql)?;
    conn.execute_batch("COMMIT").map_err(sql)?;
    conn.close().map_err(|(_, e)| sql(e))
}

/// `YYYYMMDDTHHMMSSZ-xxxxxx` for a session started at `t`.
fn new_id(t: SystemTime) -> String {
    let stamp = format_time(t);
    let b = stamp.as_bytes();
    let pick = |r: std::ops::Range<usize>| &stamp[r];
    debug_assert_eq!(b.len(), 24);
    let mut h = RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!(
        "{}{}{}T{}{}{}Z-{:06x}",
        pick(0..4),
        pick(5..7),
        pick(8..10),
        pick(11..13),
        pick(14..16),
        pick(17..19),
        h.finish() & 0xff_ffff
    )
}

/// Whether `s` has the shape of a session id.
pub fn is_session_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 23
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 => c == b'T',
            15 => c == b'Z',
            16 => c == b'-',
            17.. => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            _ => c.is_ascii_digit(),
        })
}

/// Failed writes, reported by flush and finish.
struct WriteState {
    path: PathBuf,
    failed: u64,
    first: Option<String>,
    /// Events taken off the channel; shared with [`SessionLog::dropped_events`].
    taken: Arc<AtomicU64>,
}

impl WriteState {
    fn status(&self) -> Result<(), LogError> {
        match &self.first {
            None => Ok(()),
            Some(first) => {
                Err(LogError::WriteFailed { path: self.path.clone(), failed: self.failed, first: first.clone() })
            }
        }
    }

    /// Commits `pending` in one transaction, or one by one when that fails.
    fn commit(&mut self, conn: &mut Connection, pending: &mut Vec<Event>) {
        if pending.is_empty() {
            return;
        }
        if insert(conn, pending).is_err() {
            for event in pending.iter() {
                if let Err(e) = insert(conn, std::slice::from_ref(event)) {
                    self.failed += 1;
                    self.first.get_or_insert_with(|| e.to_string());
                }
            }
        }
        pending.clear();
    }
}

fn write_loop(mut conn: Connection, rx: Receiver<Msg>, mut state: WriteState) {
    let mut pending = Vec::new();
    while let Ok(first) = rx.recv() {
        if matches!(first, Msg::Event(_)) {
            std::thread::sleep(GATHER);
        }
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Event(event) => {
                    state.taken.fetch_add(1, Ordering::SeqCst);
                    pending.push(event);
                    if pending.len() >= BATCH {
                        state.commit(&mut conn, &mut pending);
                    }
                }
                Msg::Flush(ack) => {
                    state.commit(&mut conn, &mut pending);
                    let _ = ack.send(state.status());
                }
                Msg::Finish { time, exit_status, ack } => {
                    // Events already queued behind the finish (a request that completed while the
                    // session ended) are still written — a bounded number, so that a producer that
                    // never stops cannot hold the finish.
                    let mut flushes = Vec::new();
                    for late in rx.try_iter().take(64 * BATCH) {
                        match late {
                            Msg::Event(event) => {
                                state.taken.fetch_add(1, Ordering::SeqCst);
                                pending.push(event);
                            }
                            Msg::Flush(ack) => flushes.push(ack),
                            Msg::Finish { .. } | Msg::Close => {}
                        }
                    }
                    state.commit(&mut conn, &mut pending);
                    let ended = conn
                        .execute(
                            "UPDATE session SET ended = ?1, exit_status = ?2",
                            params![format_time(time), exit_status],
                        )
                        .map_err(|source| LogError::Sqlite { path: state.path.clone(), source });
                    let closed =
                        conn.close().map_err(|(_, source)| LogError::Sqlite { path: state.path.clone(), source });
                    for flush in flushes {
                        let _ = flush.send(state.status());
                    }
                    let _ = ack.send(ended.and(closed).and_then(|_| state.status()));
                    // Anything sent from now on is never taken, so `dropped_events` counts it.
                    return;
                }
                Msg::Close => {
                    state.commit(&mut conn, &mut pending);
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        state.commit(&mut conn, &mut pending);
    }
}

fn insert(conn: &mut Connection, events: &[Event]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for event in events {
        match event {
            Event::Request(r) => {
                tx.prepare_cached(
                    "INSERT INTO requests (time, method, host, path, allowed, rule, status, bytes_in, bytes_out) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    format_time(r.time),
                    r.method,
                    r.host,
                    r.path,
                    r.allowed,
                    r.rule,
                    r.status,
                    to_i64(r.bytes_in),
                    to_i64(r.bytes_out)
                ])?;
            }
            Event::Dns(d) => {
                tx.prepare_cached("INSERT INTO dns (time, name, qtype, answered) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![format_time(d.time), d.name, d.qtype, d.answered])?;
            }
            Event::Exec(e) => {
                let argv = serde_json::to_string(&e.argv).unwrap_or_else(|_| "[]".into());
                let ms = to_i64(u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX));
                tx.prepare_cached("INSERT INTO execs (time, argv, exit_status, duration_ms) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![format_time(e.time), argv, e.exit_status, ms])?;
            }
        }
    }
    tx.commit()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

fn sql_error(path: &Path, source: rusqlite::Error) -> LogError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            LogError::Corrupt { path: path.to_path_buf(), detail: source.to_string() }
        }
        _ => LogError::Sqlite { path: path.to_path_buf(), source },
    }
}

fn corrupt(path: &Path, detail: impl Into<String>) -> LogError {
    LogError::Corrupt { path: path.to_path_buf(), detail: detail.into() }
}

/// Opens a log read-only and checks its schema version.
fn open_read(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| sql_error(path, e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| sql_error(path, e))?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| sql_error(path, e))?;
    if found != SCHEMA_VERSION {
        return Err(LogError::UnsupportedSchema { path: path.to_path_buf(), found, expected: SCHEMA_VERSION });
    }
    Ok(conn)
}

fn time_at(path: &Path, what: &str, s: &str) -> Result<SystemTime, LogError> {
    parse_time(s).ok_or_else(|| corrupt(path, format!("bad {what} time {s:?}")))
}

fn words_at(path: &Path, what: &str, s: &str) -> Result<Vec<String>, LogError> {
    serde_json::from_str(s).map_err(|e| corrupt(path, format!("bad {what} {s:?}: {e}")))
}

fn read_info(conn: &Connection, path: &Path) -> Result<SessionInfo, LogError> {
    type Row = (String, String, Option<String>, String, String, String, String, String, Option<String>);
    let mut stmt = conn
        .prepare("SELECT id, started, ended, image, version, assets, command, hypervisor, exit_status FROM session")
        .map_err(|e| sql_error(path, e))?;
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| sql_error(path, e))?;
    let [(id, started, ended, image, version, assets, command, hypervisor, exit_status)] =
        <[Row; 1]>::try_from(rows).map_err(|rows| corrupt(path, format!("{} session rows, expected 1", rows.len())))?;
    Ok(SessionInfo {
        started: time_at(path, "start", &started)?,
        ended: ended.as_deref().map(|e| time_at(path, "end", e)).transpose()?,
        command: words_at(path, "command", &command)?,
        path: path.to_path_buf(),
        id,
        image,
        version,
        assets,
        hypervisor,
        exit_status,
    })
}

fn read_events(conn: &Connection, path: &Path) -> Result<Vec<Event>, LogError> {
    let sql = |e| sql_error(path, e);
    let mut events = Vec::new();

    let mut stmt = conn.prepare("SELECT time, name, qtype, answered FROM dns ORDER BY rowid").map_err(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(sql)?;
    for row in rows {
        let (time, name, qtype, answered) = row.map_err(sql)?;
        events.push(Event::Dns(DnsRecord { time: time_at(path, "dns", &time)?, name, qtype, answered }));
    }

    let mut stmt = conn
        .prepare(
            "SELECT time, method, host, path, allowed, rule, status, bytes_in, bytes_out FROM requests ORDER BY rowid",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            let time: String = r.get(0)?;
            let (bytes_in, bytes_out): (i64, i64) = (r.get(7)?, r.get(8)?);
            Ok((time, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, bytes_in, bytes_out))
        })
        .map_err(sql)?;
    for row in rows {
        let (time, method, host, req_path, allowed, rule, status, bytes_in, bytes_out) = row.map_err(sql)?;
        let bytes = |n: i64| u64::try_from(n).map_err(|_| corrupt(path, format!("negative byte count {n}")));
        events.push(Event::Request(RequestRecord {
            time: time_at(path, "request", &time)?,
            method,
            host,
            path: req_path,
            allowed,
            rule,
            status,
            bytes_in: bytes(bytes_in)?,
            bytes_out: bytes(bytes_out)?,
        }));
    }

    let mut stmt =
        conn.prepare("SELECT time, argv, exit_status, duration_ms FROM execs ORDER BY rowid").map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get::<_, i64>(3)?)))
        .map_err(sql)?;
    for row in rows {
        let (time, argv, exit_status, ms) = row.map_err(sql)?;
        let ms = u64::try_from(ms).map_err(|_| corrupt(path, format!("negative exec duration {ms}")))?;
        events.push(Event::Exec(ExecRecord {
            time: time_at(path, "exec", &time)?,
            argv: words_at(path, "argv", &argv)?,
            exit_status,
            duration: Duration::from_millis(ms),
        }));
    }

    // Stable: equal times keep DNS, request, exec order, each in write order.
    events.sort_by_key(Event::time);
    Ok(events)
}

/// Reads one session log file.
pub fn read_session_file(path: &Path) -> Result<SessionDump, LogError> {
    let conn = open_read(path)?;
    let info = read_info(&conn, path)?;
    let events = read_events(&conn, path)?;
    Ok(SessionDump { info, events })
}

fn read_summary(path: &Path) -> Result<SessionSummary, LogError> {
    let conn = open_read(path)?;
    let info = read_info(&conn, path)?;
    let (requests, denied): (i64, i64) = conn
        .query_row("SELECT count(*), coalesce(sum(allowed = 0), 0) FROM requests", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| sql_error(path, e))?;
    Ok(SessionSummary {
        id: info.id,
        started: info.started,
        ended: info.ended,
        image: info.image,
        version: info.version,
        command: info.command,
        exit_status: info.exit_status,
        requests: u64::try_from(requests).unwrap_or(0),
        denied: u64::try_from(denied).unwrap_or(0),
    })
}

/// Session ids in `dir`, ascending (= oldest first, to the second). A missing directory has none.
fn session_ids(dir: &Path) -> Result<Vec<String>, LogError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LogError::ReadDir { path: dir.to_path_buf(), source }),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LogError::ReadDir { path: dir.to_path_buf(), source })?;
        if let Some(id) = entry.file_name().to_str().and_then(|n| n.strip_suffix(".db")).filter(|s| is_session_id(s)) {
            ids.push(id.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

fn db_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.db"))
}

/// Every session in `dir`, newest first.
pub fn list_sessions(dir: &Path) -> Result<Vec<SessionSummary>, LogError> {
    let mut all = session_ids(dir)?.iter().map(|id| read_summary(&db_path(dir, id))).collect::<Result<Vec<_>, _>>()?;
    all.sort_by(|a, b| (b.started, &b.id).cmp(&(a.started, &a.id)));
    Ok(all)
}

/// Which session `query` names: `None` or `"latest"` → the newest; otherwise a unique id prefix
/// (an exact id always wins).
pub fn resolve_session(dir: &Path, query: Option<&str>) -> Result<String, LogError> {
    let ids = session_ids(dir)?;
    match query.filter(|q| *q != "latest") {
        None => latest(dir, &ids),
        Some(q) => {
            if ids.iter().any(|id| id == q) {
                return Ok(q.to_owned());
            }
            let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(q)).collect();
            match matches.as_slice() {
                [] => Err(LogError::UnknownSession { id: q.to_owned(), dir: dir.to_path_buf() }),
                [one] => Ok((*one).clone()),
                many => Err(LogError::AmbiguousSession {
                    prefix: q.to_owned(),
                    candidates: many.iter().map(|s| (*s).clone()).collect(),
                }),
            }
        }
    }
}

/// The newest id; sessions started in the same second are told apart by their `started`.
fn latest(dir: &Path, ids: &[String]) -> Result<String, LogError> {
    let Some(last) = ids.last() else { return Err(LogError::NoSessions { dir: dir.to_path_buf() }) };
    let second = &last[..16];
    let same: Vec<&String> = ids.iter().filter(|id| id.starts_with(second)).collect();
    if same.len() == 1 {
        return Ok(last.clone());
    }
    let mut best: Option<(SystemTime, &String)> = None;
    for id in same {
        let path = db_path(dir, id);
        let started = read_info(&open_read(&path)?, &path)?.started;
        if best.is_none_or(|b| (started, id) > b) {
            best = Some((started, id));
        }
    }
    Ok(best.map(|(_, id)| id.clone()).unwrap_or_else(|| last.clone()))
}

/// Reads the session `query` names (see [`resolve_session`]).
pub fn read_session(dir: &Path, query: Option<&str>) -> Result<SessionDump, LogError> {
    let id = resolve_session(dir, query)?;
    read_session_file(&db_path(dir, &id))
}

/// `capsem logs [SESSION] [--json] [--list]`: the text to print on stdout.
pub fn logs_command(sessions_dir: &Path, session: Option<&str>, json: bool, list: bool) -> Result<String, LogError> {
    if list {
        if let Some(id) = session {
            return Err(LogError::ListWithSession { id: id.to_owned() });
        }
        let sessions = list_sessions(sessions_dir)?;
        return Ok(if json { pretty(&render_list_json(&sessions)) } else { render_list(&sessions) });
    }
    let dump = read_session(sessions_dir, session)?;
    Ok(if json { pretty(&render_json(&dump)) } else { render_text(&dump) })
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        parse_time(s).unwrap()
    }

    #[test]
    fn ids_are_timestamps_plus_random_hex() {
        let t = at("2025-01-02T03:04:05.678Z");
        let a = new_id(t);
        assert!(a.starts_with("20250102T030405Z-"), "{a}");
        assert!(is_session_id(&a), "{a}");
        let ids: std::collections::BTreeSet<_> = (0..50).map(|_| new_id(t)).collect();
        assert!(ids.len() > 45, "{ids:?}");
        assert!(new_id(at("2025-01-02T03:04:06.000Z")) > a);
        for bad in ["20250102T030405Z-abcdeg", "20250102T030405Z_abcdef", "20250102T030405Z-ABCDEF", "latest", ""] {
            assert!(!is_session_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_failed_write_is_reported_by_flush_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SessionMeta {
            image: "i".into(),
            version: "1".into(),
            assets_dir: "/a".into(),
            command: vec![],
            hypervisor: "qemu".into(),
        };
        let log = SessionLog::create(dir.path(), meta).unwrap();
        // Break the table behind the writer's back.
        let other = Connection::open(log.path()).unwrap();
        other
            .execute_batch("CREATE TRIGGER no_dns BEFORE INSERT ON dns BEGIN SELECT RAISE(ABORT, 'dns refused'); END;")
            .unwrap();
        drop(other);
        log.dns(DnsRecord { time: SystemTime::now(), name: "x".into(), qtype: "A".into(), answered: true });
        log.request(RequestRecord {
            time: SystemTime::now(),
            method: "GET".into(),
            host: "h".into(),
            path: "/".into(),
            allowed: true,
            rule: "r".into(),
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
        });
        let err = log.flush().unwrap_err().to_string();
        assert!(err.contains("1 event(s) could not be written") && err.contains("dns refused"), "{err}");
        assert!(log.finish("0").is_err());
        assert!(matches!(log.finish("0"), Err(LogError::Finished { .. })));
        log.request(RequestRecord {
            time: SystemTime::now(),
            method: "GET".into(),
            host: "late".into(),
            path: "/".into(),
            allowed: true,
            rule: String::new(),
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
        });
        assert_eq!(log.dropped_events(), 1);
        let dump = read_session_file(log.path()).unwrap();
        assert_eq!(dump.events.len(), 1, "the request after the failed DNS insert still landed");
        assert_eq!(dump.info.exit_status.as_deref(), Some("0"));
    }
}
