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
const SCHEMA_VERSION: i64 = 3;

/// The columns of an `Entry`, in `entry_from_row`'s order, as each schema version can give them: a
/// catalog opened read-only is not migrated.
/// (Schema 2 marked a damaged row by writing `s3backup:damaged` over its ETag; 3 keeps the ETag.)
fn columns(version: i64) -> &'static str {
    match version {
        ..=1 => "key, size, last_modified_ns, etag, NULL, 0",
        2 => "key, size, last_modified_ns, etag, crc64nvme, etag = 's3backup:damaged'",
        _ => "key, size, last_modified_ns, etag, crc64nvme, damaged",
    }
}

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
                     damaged INTEGER NOT NULL DEFAULT 0
                 ) WITHOUT ROWID;"
            }
            1 => {
                "ALTER TABLE files ADD COLUMN crc64nvme INTEGER;
                 ALTER TABLE files ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;"
            }
            2 => {
                "ALTER TABLE files ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
                 UPDATE files SET damaged = 1 WHERE etag = 's3backup:damaged';"
            }
            _ => "",
        };
        if !migration.is_empty() {
            conn.execute_batch(&format!(
                "BEGIN; {migration} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(err)?;
        }
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            path: path.into(),
            cols: columns(SCHEMA_VERSION),
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
                     (key, size, last_modified_ns, etag, crc64nvme, damaged)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            for e in entries {
                stmt.execute(params![
                    e.key,
                    e.size as i64,
                    e.last_modified.and_then(unix_nanos),
                    e.etag,
                    e.crc64nvme.map(|c| c as i64),
                    e.damaged
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

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        key: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        last_modified: r.get::<_, Option<i64>>(2)?.map(from_unix_nanos),
        etag: r.get(3)?,
        crc64nvme: r.get::<_, Option<i64>>(4)?.map(|c| c as u64),
        damaged: r.get(5)?,
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
