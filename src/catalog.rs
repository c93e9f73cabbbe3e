//! The per-destination catalog: what the backup wrote, one row per file (key, size, LastModified,
//! ETag), in an SQLite database in the destination's state folder.
//!
//! It is what tells two versions of an object apart when size and LastModified cannot: an overwrite in
//! the same second with the same size keeps both, but S3 gives it a new ETag. Rows are written in the
//! commit batch after the renames are durable, so a kill at any instant leaves either the old row (the
//! next run sees an ETag that differs from the listing and fetches again) or none (the next run adopts
//! the file by size and mtime): never a row that vouches for bytes the folder does not hold.
//!
//! The relative path of a file is its key (the key → path mapping is verbatim or refused), so the key
//! is the one column that names it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// The database file inside the per-destination state folder.
pub const FILE_NAME: &str = "catalog.sqlite";

/// Bumped when the schema changes; an older file is migrated by `open`.
const SCHEMA_VERSION: i64 = 4;

/// The columns of an `Entry`, in `entry_from_row`'s order, as each schema version can give them: a
/// catalog opened read-only is not migrated.
/// (Schema 2 marked a damaged row by writing `s3backup:damaged` over its ETag; 3 keeps the ETag.)
fn columns(version: i64) -> &'static str {
    match version {
        ..=1 => "key, size, last_modified_ns, etag, NULL, 0, NULL",
        2 => "key, size, last_modified_ns, etag, crc64nvme, etag = 's3backup:damaged', NULL",
        3 => "key, size, last_modified_ns, etag, crc64nvme, damaged, NULL",
        _ => "key, size, last_modified_ns, etag, crc64nvme, damaged, version_id",
    }
}

/// Schema 4: the versions history holds (`held`), the delete markers seen (`markers`), and one-off
/// facts such as "the history written before schema 4 was adopted" (`meta`).
const HISTORY_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS held (
        file TEXT PRIMARY KEY NOT NULL,
        key TEXT NOT NULL,
        version_id TEXT,
        size INTEGER NOT NULL,
        last_modified_ns INTEGER,
        until_ns INTEGER NOT NULL,
        exact INTEGER NOT NULL,
        etag TEXT,
        crc64nvme INTEGER,
        followed_by TEXT,
        damaged INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS held_by_key ON held (key, until_ns);
    CREATE TABLE IF NOT EXISTS markers (
        key TEXT NOT NULL,
        version_id TEXT NOT NULL,
        at_ns INTEGER NOT NULL,
        followed_by TEXT,
        PRIMARY KEY (key, version_id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value TEXT) WITHOUT ROWID;";

#[derive(Debug, thiserror::Error)]
#[error("catalog {path}: {}", detail.as_deref().map_or_else(|| source.to_string(), str::to_owned))]
pub struct CatalogError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
    /// Said instead of SQLite's own message, when ours says more.
    detail: Option<&'static str>,
}

impl CatalogError {
    fn with_detail(mut self, detail: &'static str) -> CatalogError {
        self.detail = Some(detail);
        self
    }
}

/// One backed-up file as the backup wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    /// As the listing gave it, quotes included; compared as an opaque string.
    pub etag: Option<String>,
    /// CRC64NVME of the bytes as they were written; none for a file adopted from before the catalog
    /// (until `verify` records it). A folder marker's row (key ending in `/`) has size 0 and none.
    pub crc64nvme: Option<u64>,
    /// `verify` found the file missing, modified or corrupt: the next backup fetches it, and the file
    /// is no version of the object (history does not keep it). Cleared when a verify finds it intact.
    pub damaged: bool,
    /// The S3 version this file holds, when the run listed versions (`--versions`); none otherwise.
    pub version_id: Option<String>,
}

/// A version history holds: its file (relative to the history folder), and the interval during which
/// it was the bucket's current version of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub file: String,
    pub key: String,
    pub version_id: Option<String>,
    pub size: u64,
    /// When it became current (its LastModified); none when unknown.
    pub last_modified: Option<SystemTime>,
    /// When it stopped being current.
    pub until: SystemTime,
    /// `until` is to the second (the LastModified of what followed it); false: only a run's time
    /// (the run that found it gone or replaced).
    pub exact: bool,
    pub etag: Option<String>,
    pub crc64nvme: Option<u64>,
    /// The VersionId of the entry (version or delete marker) that followed it, when a versioned
    /// listing said: what orders versions of one second.
    pub followed_by: Option<String>,
    /// `verify` found its file missing or not as written: no version (restore calls it corrupt), and a
    /// versioned run fetches it again. Cleared when a verify finds it intact.
    pub damaged: bool,
}

/// A noncurrent version or delete marker the versioned listing returned (`note_versions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    pub until: SystemTime,
    pub etag: Option<String>,
    pub checksum_type: Option<String>,
    /// The VersionId of the entry that followed it.
    pub followed_by: Option<String>,
}

/// One key as it was at an instant (`as_of`), or one of its versions (`versions_of`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AtInstant {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub size: u64,
    pub etag: Option<String>,
    #[serde(skip)]
    pub crc64nvme: Option<u64>,
    /// When it became current (RFC 3339 in the JSON).
    #[serde(serialize_with = "ser_time")]
    pub current_from: Option<SystemTime>,
    /// When it stopped being current; none while it is.
    #[serde(serialize_with = "ser_time")]
    pub current_until: Option<SystemTime>,
    /// `second` or `run`: how exactly the interval is known.
    pub precision: &'static str,
    /// The VersionId of the entry that followed it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followed_by: Option<String>,
    /// `dest` (the file under `--dest`) or `history` (under the history folder).
    pub place: &'static str,
    /// The file's path relative to its place (a delete marker has none).
    pub file: Option<String>,
    /// A delete marker (in `versions_of` only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub delete_marker: bool,
    /// `verify` found the file damaged: no version until a backup fetches it again (restore calls it
    /// corrupt).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub damaged: bool,
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::instant::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// The backed-up files (folder markers not counted) under a prefix.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub bytes: u64,
}

/// A shared handle: the planner reads (and adopts), the committer writes. SQLite serialises writers
/// anyway; one connection behind a mutex keeps it to one file handle and no busy retries.
#[derive(Clone)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
    /// `columns()` for this file's schema.
    cols: &'static str,
    /// The file has schema 4's history tables (a read-only older one has not).
    has_history: bool,
}

impl Catalog {
    /// Open (creating when missing) the catalog in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Catalog, CatalogError> {
        let path = state_dir.join(FILE_NAME);
        let err = |source| CatalogError {
            path: path.clone(),
            source,
            detail: None,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        // WAL with synchronous=NORMAL: a commit costs no fsync (the checkpoint pays); a power cut may
        // lose the last commits, which only makes the next run adopt or re-fetch those files.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        let migration = match version {
            ..=0 => {
                "CREATE TABLE IF NOT EXISTS files (
                     key TEXT PRIMARY KEY NOT NULL,
                     size INTEGER NOT NULL,
                     last_modified_ns INTEGER,
                     etag TEXT,
                     crc64nvme INTEGER,
                     damaged INTEGER NOT NULL DEFAULT 0,
                     version_id TEXT
                 ) WITHOUT ROWID;"
            }
            1 => {
                "ALTER TABLE files ADD COLUMN crc64nvme INTEGER;
                 ALTER TABLE files ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE files ADD COLUMN version_id TEXT;"
            }
            2 => {
                "ALTER TABLE files ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
                 UPDATE files SET damaged = 1 WHERE etag = 's3backup:damaged';
                 ALTER TABLE files ADD COLUMN version_id TEXT;"
            }
            3 => "ALTER TABLE files ADD COLUMN version_id TEXT;",
            _ => "",
        };
        if version < SCHEMA_VERSION {
            conn.execute_batch(&format!(
                "BEGIN; {migration} {HISTORY_TABLES} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(err)?;
        }
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            path: path.into(),
            cols: columns(SCHEMA_VERSION),
            has_history: true,
        })
    }

    /// Open an existing catalog read-only (a dry run, `restore`); `None` when there is none. A file that
    /// holds no catalog (truncated to 0 bytes, another database) is an error, not an empty backup.
    pub fn open_read_only(state_dir: &Path) -> Result<Option<Catalog>, CatalogError> {
        let path = state_dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(None);
        }
        let err = |source| CatalogError {
            path: path.clone(),
            source,
            detail: None,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        let has_files: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'files'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if !has_files {
            return Err(err(rusqlite::Error::InvalidQuery)
                .with_detail("holds no s3backup catalog (empty, truncated or another database)"));
        }
        Ok(Some(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            path: path.into(),
            cols: columns(version),
            has_history: version >= 4,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding it cannot leave SQLite inconsistent (its own transactions see to that).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError {
            path: self.path.to_path_buf(),
            source,
            detail: None,
        }
    }

    /// The row the backup recorded for `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {} FROM files WHERE key = ?1", self.cols))
            .map_err(|e| self.err(e))?;
        stmt.query_row([key], entry_from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Record `entries` in one transaction (insert or replace).
    pub fn record(&self, entries: &[Entry]) -> Result<(), CatalogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO files
                     (key, size, last_modified_ns, etag, crc64nvme, damaged, version_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| self.err(e))?;
            for e in entries {
                stmt.execute(params![
                    e.key,
                    e.size as i64,
                    e.last_modified.and_then(unix_nanos),
                    e.etag,
                    e.crc64nvme.map(|c| c as i64),
                    e.damaged,
                    e.version_id
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Note keys the listing returned this run (for `unseen`).
    pub fn mark_seen<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY) WITHOUT ROWID",
        )
        .map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR IGNORE INTO temp.seen (key) VALUES (?1)")
                .map_err(|e| self.err(e))?;
            for k in keys {
                stmt.execute([k]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Rows under `prefix` that the listing did not return (`mark_seen`), in key order, and the files
    /// (not folder markers) under `prefix` in all.
    pub fn unseen(&self, prefix: &str) -> Result<(Vec<Entry>, Totals), CatalogError> {
        let conn = self.lock();
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY) WITHOUT ROWID",
        )
        .map_err(|e| self.err(e))?;
        // substr() rather than LIKE: keys may hold '%' and '_'.
        let (files, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM files
                 WHERE substr(key, 1, length(?1)) = ?1 AND substr(key, -1) <> '/'",
                [prefix],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM files
                 WHERE substr(key, 1, length(?1)) = ?1
                   AND key NOT IN (SELECT key FROM temp.seen) ORDER BY key",
                self.cols
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([prefix], entry_from_row)
            .map_err(|e| self.err(e))?;
        let gone = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        let totals = Totals {
            files: files as u64,
            bytes: bytes as u64,
        };
        Ok((gone, totals))
    }

    /// Forget `keys` (their files left the destination).
    pub fn remove<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM files WHERE key = ?1")
                .map_err(|e| self.err(e))?;
            for k in keys {
                stmt.execute([k]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` rows under `prefix` after `after`, in key order: a page at a time, so that a walk
    /// over every row needs no more memory than a page.
    pub fn page(&self, prefix: &str, after: &str, limit: u32) -> Result<Vec<Entry>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {} FROM files
                 WHERE key > ?2 AND substr(key, 1, length(?1)) = ?1 ORDER BY key LIMIT ?3",
                self.cols
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![prefix, after, limit], entry_from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every row, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, CatalogError> {
        self.page("", "", u32::MAX)
    }

    /// Record the checksum of a file adopted without one (`verify` reads it).
    pub fn set_checksum(&self, key: &str, crc64nvme: u64) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE files SET crc64nvme = ?2 WHERE key = ?1 AND crc64nvme IS NULL",
                params![key, crc64nvme as i64],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Mark `key` damaged (or, with `false`, intact again): a damaged row makes the next backup fetch
    /// the file, and its file is no version of the object.
    pub fn set_damaged(&self, key: &str, damaged: bool) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE files SET damaged = ?2 WHERE key = ?1 AND damaged <> ?2",
                params![key, damaged],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// The time machine: what history holds, and the bucket at an instant.
impl Catalog {
    /// Record versions now held in history (insert or replace, by file).
    pub fn record_held(&self, rows: &[Held]) -> Result<(), CatalogError> {
        if rows.is_empty() || !self.has_history {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO held
                     (file, key, version_id, size, last_modified_ns, until_ns, exact, etag, crc64nvme,
                      followed_by, damaged)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(|e| self.err(e))?;
            for h in rows {
                stmt.execute(params![
                    h.file,
                    h.key,
                    h.version_id,
                    h.size as i64,
                    h.last_modified.and_then(unix_nanos),
                    unix_nanos(h.until).unwrap_or(0),
                    h.exact,
                    h.etag,
                    h.crc64nvme.map(|c| c as i64),
                    h.followed_by,
                    h.damaged,
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Forget what history held in these folders (pruned, or never there).
    pub fn forget_held_in(&self, folders: &[String]) -> Result<(), CatalogError> {
        if folders.is_empty() || !self.has_history {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for f in folders {
            let prefix = format!("{f}/");
            tx.execute(
                "DELETE FROM held WHERE substr(file, 1, length(?1)) = ?1",
                [&prefix],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Up to `limit` held versions whose key starts with `prefix`, after `after` (a file), by file.
    pub fn held_page(
        &self,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Held>, CatalogError> {
        if !self.has_history {
            return Ok(Vec::new());
        }
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT file, key, version_id, size, last_modified_ns, until_ns, exact, etag, crc64nvme,
                        followed_by, damaged
                 FROM held WHERE file > ?2 AND substr(key, 1, length(?1)) = ?1
                 ORDER BY file LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![prefix, after, limit], held_from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The held version whose file is `file` (relative to the history folder).
    pub fn held_by_file(&self, file: &str) -> Result<Option<Held>, CatalogError> {
        if !self.has_history {
            return Ok(None);
        }
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT file, key, version_id, size, last_modified_ns, until_ns, exact, etag, crc64nvme,
                        followed_by, damaged
                 FROM held WHERE file = ?1",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_row([file], held_from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Forget the damaged copies of versions held again intact (a versioned run fetched them anew);
    /// their files stay where they are, no version of anything. Returns how many.
    pub fn drop_superseded_damage(&self) -> Result<u64, CatalogError> {
        self.lock()
            .execute(
                "DELETE FROM held WHERE damaged = 1 AND EXISTS (
                     SELECT 1 FROM held h2 WHERE h2.key = held.key
                       AND h2.version_id = held.version_id AND h2.damaged = 0)",
                [],
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Mark a held version damaged (or intact again): a damaged one is no version to `as_of` (restore
    /// calls it corrupt), and a versioned run fetches it again while the bucket holds it.
    pub fn set_held_damaged(&self, file: &str, damaged: bool) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE held SET damaged = ?2 WHERE file = ?1 AND damaged <> ?2",
                params![file, damaged],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Whether a held row names `file` (relative to the history folder).
    pub fn held_file_taken(&self, file: &str) -> Result<bool, CatalogError> {
        if !self.has_history {
            return Ok(false);
        }
        self.lock()
            .query_row(
                "SELECT count(*) > 0 FROM held WHERE file = ?1",
                [file],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// How many versions history holds.
    pub fn held_count(&self) -> Result<u64, CatalogError> {
        if !self.has_history {
            return Ok(0);
        }
        self.lock()
            .query_row("SELECT count(*) FROM held", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Note a versioned listing's noncurrent versions (kept for this run: `settle_held`,
    /// `missing_versions`) and its delete markers (kept for good).
    pub fn note_versions(
        &self,
        versions: &[Listed],
        markers: &[(String, String, SystemTime, Option<String>)],
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch(PENDING_TABLE).map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO temp.pending
                     (key, version_id, size, last_modified_ns, until_ns, etag, checksum_type,
                      followed_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(|e| self.err(e))?;
            for v in versions {
                stmt.execute(params![
                    v.key,
                    v.version_id,
                    v.size as i64,
                    v.last_modified.and_then(unix_nanos),
                    unix_nanos(v.until).unwrap_or(0),
                    v.etag,
                    v.checksum_type,
                    v.followed_by,
                ])
                .map_err(|e| self.err(e))?;
            }
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO markers (key, version_id, at_ns, followed_by) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key, version_id) DO UPDATE SET followed_by = excluded.followed_by",
                )
                .map_err(|e| self.err(e))?;
            for (key, vid, at, followed_by) in markers {
                stmt.execute(params![key, vid, unix_nanos(*at).unwrap_or(0), followed_by])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// After a complete versioned listing: held rows of listed versions take the exact interval the
    /// listing gives; rows held before versions were known (no VersionId: a moved file, history adopted
    /// from before the catalog knew it) are matched to the listed version of the same key, size and
    /// LastModified. Returns how many rows changed.
    pub fn settle_held(&self) -> Result<u64, CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch(PENDING_TABLE).map_err(|e| self.err(e))?;
        // Only where exactly one listed version fits: two versions of one second and size (an
        // overwrite within a second) tell apart only by ETag, and a row without one is left unmatched
        // (its version is then fetched again: a duplicate, never a wrong VersionId).
        let fits = "FROM temp.pending p
                    WHERE p.key = held.key AND p.size = held.size
                      AND p.last_modified_ns = held.last_modified_ns
                      AND (held.etag IS NULL OR p.etag = held.etag)
                      AND NOT EXISTS (SELECT 1 FROM held h2
                                      WHERE h2.key = p.key AND h2.version_id = p.version_id)";
        let adopted = tx
            .execute(
                &format!(
                    "UPDATE held SET version_id = (SELECT p.version_id {fits})
                     WHERE version_id IS NULL AND (SELECT count(*) {fits}) = 1"
                ),
                [],
            )
            .map_err(|e| self.err(e))?;
        let exact = tx
            .execute(
                "UPDATE held SET until_ns = p.until_ns, exact = 1, followed_by = p.followed_by
                 FROM temp.pending p
                 WHERE held.key = p.key AND held.version_id = p.version_id
                   AND (held.until_ns <> p.until_ns OR held.exact = 0
                        OR held.followed_by IS NOT p.followed_by)",
                [],
            )
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok((adopted + exact) as u64)
    }

    /// Up to `limit` listed noncurrent versions (`note_versions`) that neither history nor the
    /// destination holds, after `(key, version_id)`, in that order.
    pub fn missing_versions(
        &self,
        after: (&str, &str),
        limit: u32,
    ) -> Result<Vec<Listed>, CatalogError> {
        let conn = self.lock();
        conn.execute_batch(PENDING_TABLE).map_err(|e| self.err(e))?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT p.key, p.version_id, p.size, p.last_modified_ns, p.until_ns, p.etag,
                        p.checksum_type, p.followed_by
                 FROM temp.pending p
                 WHERE (p.key, p.version_id) > (?1, ?2)
                   AND NOT EXISTS (SELECT 1 FROM held h
                                   WHERE h.key = p.key AND h.version_id = p.version_id
                                     AND h.damaged = 0)
                   AND NOT EXISTS (SELECT 1 FROM files f
                                   WHERE f.key = p.key AND f.version_id = p.version_id)
                 ORDER BY p.key, p.version_id LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after.0, after.1, limit], |r| {
                Ok(Listed {
                    key: r.get(0)?,
                    version_id: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    last_modified: r.get::<_, Option<i64>>(3)?.map(from_unix_nanos),
                    until: from_unix_nanos(r.get(4)?),
                    etag: r.get(5)?,
                    checksum_type: r.get(6)?,
                    followed_by: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The keys under `prefix` as they were at `t`: for each, the version held (in `--dest` or in
    /// history) whose interval holds `t`, the latest-begun where intervals overlap (a daily listing
    /// knows only the run that found a version replaced, the replacement's LastModified tells when).
    /// Files marked damaged are no version. In key order.
    pub fn as_of(&self, t: SystemTime, prefix: &str) -> Result<Vec<AtInstant>, CatalogError> {
        self.as_of_page(t, prefix, "", u32::MAX)
    }

    /// `as_of`, up to `limit` keys after `after`: a page at a time, so that a walk over ten million
    /// keys needs no more memory than a page.
    pub fn as_of_page(
        &self,
        t: SystemTime,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<AtInstant>, CatalogError> {
        let t = unix_nanos(t).unwrap_or(0);
        let held = if self.has_history {
            "UNION ALL
             SELECT key, version_id, size, etag, crc64nvme, last_modified_ns, until_ns, exact,
                    'history', file, damaged, followed_by
             FROM held
             WHERE key > ?3 AND substr(key, 1, length(?2)) = ?2
               AND (last_modified_ns IS NULL OR last_modified_ns <= ?1) AND until_ns > ?1"
        } else {
            ""
        };
        let vid = if self.has_history {
            "version_id"
        } else {
            "NULL"
        };
        // A read-only catalog of an older schema may lack the column (it is then read as undamaged).
        let dmg = if self.has_history { "damaged" } else { "0" };
        // A file still in `--dest` whose key the bucket has since deleted (the move to history was
        // held back by --max-delete, or is yet to come): its latest delete marker ends it.
        let ended = if self.has_history {
            "(SELECT min(m.at_ns) FROM markers m
              WHERE m.key = files.key AND m.followed_by IS NULL
                AND m.at_ns >= coalesce(files.last_modified_ns, 0))"
        } else {
            "NULL"
        };
        let sql = format!(
            "SELECT key, version_id, size, etag, crc64nvme, from_ns, until_ns, exact, place, file,
                    damaged, followed_by
             FROM (
               SELECT *, row_number() OVER (
                          PARTITION BY key ORDER BY coalesce(from_ns, -1) DESC,
                                                    until_ns IS NULL DESC, until_ns DESC,
                                                    damaged ASC) AS rn
               FROM (
                 SELECT * FROM (
                   SELECT key, {vid} AS version_id, size, etag, crc64nvme,
                          last_modified_ns AS from_ns, {ended} AS until_ns,
                          {vid} IS NOT NULL AS exact, 'dest' AS place, key AS file,
                          {dmg} AS damaged, NULL AS followed_by
                   FROM files
                   WHERE key > ?3 AND substr(key, 1, length(?2)) = ?2
                     AND (last_modified_ns IS NULL OR last_modified_ns <= ?1))
                 WHERE until_ns IS NULL OR until_ns > ?1
                 {held}))
             WHERE rn = 1 ORDER BY key LIMIT ?4"
        );
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![t, prefix, after, limit], instant_from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Whether the backup holds a version of `key` that was current at `t`.
    pub fn exists_at(&self, t: SystemTime, key: &str) -> Result<bool, CatalogError> {
        Ok(self
            .as_of_page(t, key, "", 1)?
            .first()
            .is_some_and(|r| r.key == key))
    }

    /// Every version held for `key` (in `--dest` and in history) and every delete marker seen, the
    /// newest first.
    pub fn versions_of(&self, key: &str) -> Result<Vec<AtInstant>, CatalogError> {
        let dmg = if self.has_history { "damaged" } else { "0" };
        let vid = if self.has_history {
            "version_id"
        } else {
            "NULL"
        };
        let mut sql = format!(
            "SELECT key, {vid}, size, etag, crc64nvme, last_modified_ns, NULL, {vid} IS NOT NULL,
                    'dest', key, {dmg}, NULL
             FROM files WHERE key = ?1"
        );
        if self.has_history {
            sql.push_str(
                " UNION ALL
                 SELECT key, version_id, size, etag, crc64nvme, last_modified_ns, until_ns, exact,
                        'history', file, damaged, followed_by FROM held WHERE key = ?1
                 UNION ALL
                 SELECT key, version_id, 0, NULL, NULL, at_ns, NULL, 1, 'marker', NULL, 0,
                        followed_by
                 FROM markers WHERE key = ?1",
            );
        }
        let conn = self.lock();
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([key], instant_from_row)
            .map_err(|e| self.err(e))?;
        let mut out: Vec<AtInstant> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        // A file still in `--dest` after its key was deleted: the latest marker ends it.
        let latest_marker = out
            .iter()
            .filter(|r| r.delete_marker && r.followed_by.is_none())
            .filter_map(|r| r.current_from)
            .max();
        for r in out.iter_mut().filter(|r| r.place == "dest") {
            if latest_marker.is_some_and(|m| Some(m) >= r.current_from) {
                r.current_until = latest_marker;
            }
        }
        // The listing said what followed each entry: a marker was current until that entry began
        // (none followed it: the key is deleted now). Without that (history from before), until the
        // first version that began at or after it and was still current after it.
        let starts: std::collections::HashMap<String, Option<SystemTime>> = out
            .iter()
            .filter_map(|r| Some((r.version_id.clone()?, r.current_from)))
            .collect();
        let versions: Vec<(Option<SystemTime>, Option<SystemTime>)> = out
            .iter()
            .filter(|r| !r.delete_marker)
            .map(|r| (r.current_from, r.current_until))
            .collect();
        for m in out.iter_mut().filter(|r| r.delete_marker) {
            let at = m.current_from;
            m.current_until = match m.followed_by.as_ref().and_then(|f| starts.get(f)) {
                Some(start) => *start,
                None => versions
                    .iter()
                    .filter(|(from, until)| *from >= at && until.is_none_or(|u| Some(u) > at))
                    .filter_map(|(from, _)| *from)
                    .min(),
            };
        }
        // Newest first: by start; within one second, by how many entries followed each (the chain the
        // listing gave), then the one still current (or current longest) first.
        let follows: std::collections::HashMap<String, String> = out
            .iter()
            .filter_map(|r| Some((r.version_id.clone()?, r.followed_by.clone()?)))
            .collect();
        let depth = |r: &AtInstant| {
            let mut n = 0usize;
            let mut at = r.version_id.clone();
            while let Some(next) = at.as_ref().and_then(|id| follows.get(id)) {
                n += 1;
                if n > follows.len() {
                    break; // a cycle cannot come from a listing; never loop on one
                }
                at = Some(next.clone());
            }
            n
        };
        let mut keyed: Vec<(usize, AtInstant)> = out.into_iter().map(|r| (depth(&r), r)).collect();
        keyed.sort_by(|(da, a), (db, b)| {
            b.current_from
                .cmp(&a.current_from)
                .then(da.cmp(db))
                .then_with(|| match (a.current_until, b.current_until) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => std::cmp::Ordering::Less,
                    (Some(_), None) => std::cmp::Ordering::Greater,
                    (Some(x), Some(y)) => y.cmp(&x),
                })
        });
        let out = keyed.into_iter().map(|(_, r)| r).collect();
        Ok(out)
    }

    /// The earliest instant any held version (current or in history) was current; none when the
    /// catalog holds none with a known start.
    pub fn oldest(&self) -> Result<Option<SystemTime>, CatalogError> {
        let held = if self.has_history {
            " UNION ALL SELECT min(last_modified_ns) AS t FROM held"
        } else {
            ""
        };
        let sql =
            format!("SELECT min(t) FROM (SELECT min(last_modified_ns) AS t FROM files{held})");
        self.lock()
            .query_row(&sql, [], |r| r.get::<_, Option<i64>>(0))
            .map(|t| t.map(from_unix_nanos))
            .map_err(|e| self.err(e))
    }

    /// Record that versions which stopped being current before `t` may have been pruned (the horizon
    /// only moves forward).
    pub fn raise_horizon(&self, t: SystemTime) -> Result<(), CatalogError> {
        let t = unix_nanos(t).unwrap_or(0);
        if self.horizon()?.and_then(unix_nanos).is_some_and(|h| h >= t) {
            return Ok(());
        }
        self.set_meta(HORIZON, &t.to_string())
    }

    /// The instant before which the catalog may be incomplete (versions pruned by `--keep-days`).
    pub fn horizon(&self) -> Result<Option<SystemTime>, CatalogError> {
        Ok(self
            .meta(HORIZON)?
            .and_then(|v| v.parse::<i64>().ok())
            .map(from_unix_nanos))
    }

    /// A one-off fact (`meta`), such as whether older history was adopted.
    pub fn meta(&self, name: &str) -> Result<Option<String>, CatalogError> {
        if !self.has_history {
            return Ok(None);
        }
        self.lock()
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, name: &str, value: &str) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                [name, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// The `meta` entry of the pruning horizon (`raise_horizon`).
const HORIZON: &str = "complete-from-ns";

/// This run's noncurrent versions, as the versioned listing returned them.
const PENDING_TABLE: &str = "CREATE TEMP TABLE IF NOT EXISTS pending (
    key TEXT NOT NULL,
    version_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_modified_ns INTEGER,
    until_ns INTEGER NOT NULL,
    etag TEXT,
    checksum_type TEXT,
    followed_by TEXT,
    PRIMARY KEY (key, version_id)
) WITHOUT ROWID";

fn held_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Held> {
    Ok(Held {
        file: r.get(0)?,
        key: r.get(1)?,
        version_id: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        last_modified: r.get::<_, Option<i64>>(4)?.map(from_unix_nanos),
        until: from_unix_nanos(r.get(5)?),
        exact: r.get(6)?,
        etag: r.get(7)?,
        crc64nvme: r.get::<_, Option<i64>>(8)?.map(|c| c as u64),
        followed_by: r.get(9)?,
        damaged: r.get(10)?,
    })
}

fn instant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AtInstant> {
    let place: String = r.get(8)?;
    let (place, marker) = match place.as_str() {
        "dest" => ("dest", false),
        "history" => ("history", false),
        _ => ("marker", true),
    };
    Ok(AtInstant {
        key: r.get(0)?,
        version_id: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        etag: r.get(3)?,
        crc64nvme: r.get::<_, Option<i64>>(4)?.map(|c| c as u64),
        current_from: r.get::<_, Option<i64>>(5)?.map(from_unix_nanos),
        current_until: r.get::<_, Option<i64>>(6)?.map(from_unix_nanos),
        precision: if r.get::<_, bool>(7)? {
            "second"
        } else {
            "run"
        },
        place: if marker { "none" } else { place },
        file: r.get(9)?,
        delete_marker: marker,
        damaged: r.get(10)?,
        followed_by: r.get(11)?,
    })
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        key: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        last_modified: r.get::<_, Option<i64>>(2)?.map(from_unix_nanos),
        etag: r.get(3)?,
        crc64nvme: r.get::<_, Option<i64>>(4)?.map(|c| c as u64),
        damaged: r.get(5)?,
        version_id: r.get(6)?,
    })
}

fn unix_nanos(t: SystemTime) -> Option<i64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

fn from_unix_nanos(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, etag: &str) -> Entry {
        Entry {
            key: key.into(),
            size: 3,
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            etag: Some(etag.into()),
            crc64nvme: Some(7),
            damaged: false,
            version_id: None,
        }
    }

    #[test]
    fn records_replace_and_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path()).unwrap();
        assert_eq!(c.get("a").unwrap(), None);
        c.record(&[entry("a", "\"1\""), entry("b\u{1} c/ü", "\"2\"")])
            .unwrap();
        c.record(&[entry("a", "\"3\"")]).unwrap();
        drop(c);
        let c = Catalog::open(d.path()).unwrap();
        assert_eq!(c.get("a").unwrap(), Some(entry("a", "\"3\"")));
        assert_eq!(
            c.get("b\u{1} c/ü").unwrap(),
            Some(entry("b\u{1} c/ü", "\"2\""))
        );
        let all = c.entries().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], entry("a", "\"3\""));
        c.mark_seen(["a"]).unwrap();
        let (gone, total) = c.unseen("").unwrap();
        assert_eq!((gone.len(), total.files, total.bytes), (1, 2, 6));
        assert_eq!(gone[0].key, "b\u{1} c/ü");
        assert_eq!(c.unseen("a").unwrap().1.files, 1);
        c.remove(["b\u{1} c/ü"]).unwrap();
        assert_eq!(c.entries().unwrap().len(), 1);
        c.record(&[entry("b\u{1} c/ü", "\"2\"")]).unwrap();
        let ro = Catalog::open_read_only(d.path()).unwrap().unwrap();
        assert_eq!(ro.get("a").unwrap(), Some(entry("a", "\"3\"")));
        assert!(
            Catalog::open_read_only(tempfile::tempdir().unwrap().path())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn damage_marks_come_and_go_and_markers_are_no_files() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path()).unwrap();
        let mut marker = entry("dir/", "\"m\"");
        marker.size = 0;
        c.record(&[entry("dir/a", "\"1\""), marker]).unwrap();
        let (_, totals) = c.unseen("").unwrap();
        assert_eq!(totals, Totals { files: 1, bytes: 3 });
        c.set_damaged("dir/a", true).unwrap();
        let row = c.get("dir/a").unwrap().unwrap();
        assert!(row.damaged);
        assert_eq!(row.etag.as_deref(), Some("\"1\""), "the ETag is kept");
        c.set_damaged("dir/a", false).unwrap();
        assert!(!c.get("dir/a").unwrap().unwrap().damaged);
    }

    #[test]
    fn a_schema_2_catalog_is_read_as_it_is_and_migrated_on_open() {
        let d = tempfile::tempdir().unwrap();
        let conn = Connection::open(d.path().join(FILE_NAME)).unwrap();
        conn.execute_batch(
            "CREATE TABLE files (key TEXT PRIMARY KEY NOT NULL, size INTEGER NOT NULL,
               last_modified_ns INTEGER, etag TEXT, crc64nvme INTEGER) WITHOUT ROWID;
             INSERT INTO files VALUES ('ok', 1, NULL, '\"e\"', 5), ('bad', 1, NULL, 's3backup:damaged', 6);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(conn);
        let ro = Catalog::open_read_only(d.path()).unwrap().unwrap();
        assert!(ro.get("bad").unwrap().unwrap().damaged);
        assert!(!ro.get("ok").unwrap().unwrap().damaged);
        drop(ro);
        let c = Catalog::open(d.path()).unwrap();
        assert!(c.get("bad").unwrap().unwrap().damaged);
        assert_eq!(c.get("ok").unwrap().unwrap().crc64nvme, Some(5));
    }

    #[test]
    fn an_empty_file_is_no_catalog() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), b"").unwrap();
        let e = Catalog::open_read_only(d.path()).err().expect("no catalog");
        assert!(e.to_string().contains("holds no s3backup catalog"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_named_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE_NAME), vec![7u8; 4096]).unwrap();
        let e = Catalog::open(d.path()).err().expect("not a database");
        assert!(e.to_string().contains(FILE_NAME), "{e}");
    }
}
