//! The real binary against real S3 servers on 127.0.0.1: every behaviour of the engine issue.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::types::{ChecksumAlgorithm, StorageClass};
use common::*;

fn images(n: usize, size: usize) -> BTreeMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            (
                format!("photos/2024/{:02}/img_{i:05}.jpg", i % 12 + 1),
                bytes(i as u64, size + i),
            )
        })
        .collect()
}

#[test]
fn full_backup_then_noop_rerun_makes_no_gets() {
    let b = Bucket::new(Kind::Seaweed, "full");
    let objs = images(40, 3000);
    b.put_many(&objs);
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);

    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["listed"], 40);
    assert_eq!(j["downloaded"], 40);
    assert_eq!(j["unchanged"], 0);
    let total: usize = objs.values().map(Vec::len).sum();
    assert_eq!(j["bytes_downloaded"], total as u64);
    assert_eq!(
        j["unverified"], 0,
        "SeaweedFS ETags are MD5s: everything verifies"
    );
    assert_eq!(tree(&s.dest), objs);
    assert_eq!(object_gets(&proxy.take()), 40);
    assert!(
        r.stderr().contains("40 listed, 40 downloaded"),
        "{}",
        r.stderr()
    );

    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        (j["downloaded"].as_u64(), j["unchanged"].as_u64()),
        (Some(0), Some(40))
    );
    let lines = proxy.take();
    assert_eq!(
        object_gets(&lines),
        0,
        "no-op re-run must not GET objects: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("list-type=2")),
        "it did list: {lines:?}"
    );
    assert!(s.outside_dest().is_empty());
}

#[test]
fn files_get_last_modified_as_mtime_and_owner_only_modes() {
    let b = Bucket::new(Kind::Seaweed, "modes");
    b.put("a/b/c.jpg", b"abc");
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let lm = rt()
        .block_on(
            b.client
                .head_object()
                .bucket(&b.name)
                .key("a/b/c.jpg")
                .send(),
        )
        .unwrap()
        .last_modified()
        .cloned()
        .unwrap();
    let mtime = fs::metadata(s.dest.join("a/b/c.jpg"))
        .unwrap()
        .modified()
        .unwrap();
    let lm = SystemTime::try_from(lm).unwrap();
    let diff = mtime.duration_since(lm).unwrap_or_else(|e| e.duration());
    assert!(
        diff < Duration::from_secs(1),
        "mtime {mtime:?} vs LastModified {lm:?}"
    );
    for (p, want) in [
        ("", 0o700),
        ("a", 0o700),
        ("a/b", 0o700),
        ("a/b/c.jpg", 0o600),
    ] {
        let mode = fs::metadata(s.dest.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & !want,
            0,
            "{p:?} has mode {mode:o}, wanted at most {want:o}"
        );
    }
}

#[test]
fn pagination_past_1000_keys() {
    let b = Bucket::new(Kind::Seaweed, "pages");
    let objs: BTreeMap<String, Vec<u8>> = (0..1105)
        .map(|i| (format!("k/{i:05}"), format!("object {i}").into_bytes()))
        .collect();
    b.put_many(&objs);
    let s = Scratch::new();
    let r = backup(&b, &s, &["--concurrency", "32"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["listed"], 1105);
    assert_eq!(r.json()["downloaded"], 1105);
    assert_eq!(tree(&s.dest), objs);
}

#[test]
fn multipart_objects_come_back_exact_through_ranged_gets() {
    let b = Bucket::new(Kind::Seaweed, "multipart");
    let mib = 1024 * 1024;
    // 36 MiB: above the 32 MiB ranged threshold, so fetched as 5 parts of 8 MiB.
    let parts: Vec<Vec<u8>> = (0..6).map(|i| bytes(100 + i, 6 * mib)).collect();
    b.put_multipart("big/plain.bin", &parts, None);
    let parts_crc: Vec<Vec<u8>> = (0..2).map(|i| bytes(200 + i, 5 * mib + 7)).collect();
    b.put_multipart("big/crc.bin", &parts_crc, Some(ChecksumAlgorithm::Crc32));
    // 40 MiB in one PUT: byte ranges, then the MD5 ETag checked over the assembled file.
    let single = bytes(500, 40 * mib);
    b.put("big/single.bin", &single);
    assert!(b.etag("big/plain.bin").contains('-'), "really multipart");
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["downloaded"], 3);
    assert_eq!(
        r.json()["unverified"],
        0,
        "part MD5s check the multipart ETags"
    );
    assert_eq!(fs::read(s.dest.join("big/single.bin")).unwrap(), single);
    assert_eq!(
        fs::read(s.dest.join("big/plain.bin")).unwrap(),
        parts.concat()
    );
    assert_eq!(
        fs::read(s.dest.join("big/crc.bin")).unwrap(),
        parts_crc.concat()
    );
    let r = backup(&b, &s, &[]);
    assert_eq!(r.json()["unchanged"], 3, "{}", r.stderr());
    // The catalog's CRC64NVME of ranged and multipart downloads is combined from their parts' CRCs:
    // the whole file read back must have it.
    let r = verify_run(&s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(r.json()["ok"], 3);
}

#[test]
fn same_size_overwrite_is_fetched_again() {
    let b = Bucket::new(Kind::Seaweed, "overwrite");
    b.put("img.jpg", b"version-1");
    b.put("other.jpg", b"untouched");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    // LastModified has one-second resolution on most servers.
    std::thread::sleep(Duration::from_millis(1100));
    b.put("img.jpg", b"version-2");
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        (
            r.json()["downloaded"].as_u64(),
            r.json()["unchanged"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(fs::read(s.dest.join("img.jpg")).unwrap(), b"version-2");
}

/// Issue 17: LastModified has whole seconds, so two same-size versions written within one second look
/// alike by size and mtime; the ETag tells them apart. Each trial aligns to the start of a second; the
/// test requires at least one trial in which both versions really share their LastModified, so it
/// cannot pass by luck of timing.
#[test]
fn same_size_overwrite_within_one_second_is_fetched_by_etag() {
    let b = Bucket::new(Kind::Seaweed, "same-second");
    let s = Scratch::new();
    let last_modified = |key: &str| {
        rt().block_on(b.client.head_object().bucket(&b.name).key(key).send())
            .expect("head")
            .last_modified()
            .copied()
            .expect("LastModified")
    };
    let mut same_second = 0;
    for trial in 0..5u64 {
        let key = format!("thumbs/t{trial}.bmp");
        let v1 = bytes(100 + trial, 4096);
        let v2 = bytes(200 + trial, 4096);
        // Start just after a second boundary, leaving the rest of the second for put, backup, put.
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        std::thread::sleep(Duration::from_nanos(
            1_000_000_000 - u64::from(since.subsec_nanos()) + 5_000_000,
        ));
        b.put(&key, &v1);
        let first = last_modified(&key);
        let r = backup(&b, &s, &[]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        b.put(&key, &v2);
        if last_modified(&key) == first {
            same_second += 1;
        }
        let r = backup(&b, &s, &[]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert_eq!(r.json()["downloaded"], 1, "trial {trial}: {}", r.stderr());
        assert!(
            fs::read(s.dest.join(&key)).unwrap() == v2,
            "trial {trial}: the local file kept the first version"
        );
        let r = backup(&b, &s, &[]);
        assert_eq!(r.json()["downloaded"], 0, "trial {trial}: {}", r.stderr());
    }
    assert!(
        same_second >= 1,
        "no trial put both versions within one second: the test proved nothing"
    );
}

/// The catalog file of the one destination in `scratch`.
fn catalog_file(s: &Scratch) -> std::path::PathBuf {
    walkdir::WalkDir::new(&s.state)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "catalog.sqlite")
        .expect("a catalog in the state dir")
        .into_path()
}

/// A backup made before the catalog existed (or whose catalog is lost or unreadable) is adopted by size
/// and mtime, without downloading anything again; from then on ETags count.
#[test]
fn a_backup_without_a_catalog_is_adopted_without_downloads() {
    let b = Bucket::new(Kind::Seaweed, "adopt");
    let objs = images(12, 2000);
    b.put_many(&objs);
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    assert_eq!(backup_via(&proxy.endpoint, &b, &s, &[]).code(), 0);
    let catalog = catalog_file(&s);
    let dir = catalog.parent().unwrap().to_path_buf();
    let remove_catalog = || {
        for f in fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            if f.file_name()
                .to_string_lossy()
                .starts_with("catalog.sqlite")
            {
                fs::remove_file(f.path()).unwrap();
            }
        }
    };
    proxy.take();

    remove_catalog();
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["unchanged"], 12, "{}", r.stderr());
    assert_eq!(object_gets(&proxy.take()), 0);
    assert!(catalog.exists(), "the catalog is rebuilt");

    // An unreadable catalog is set aside, not fatal, and the backup is adopted again.
    remove_catalog();
    fs::write(&catalog, vec![0x5a; 8192]).unwrap();
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["unchanged"], 12, "{}", r.stderr());
    assert_eq!(object_gets(&proxy.take()), 0);
    assert!(r.stderr().contains("catalog.sqlite"), "{}", r.stderr());
    let aside = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|f| f.file_name().to_string_lossy().contains(".unreadable-"))
        .count();
    assert_eq!(aside, 1, "the unreadable catalog is kept for inspection");
    assert_eq!(tree(&s.dest), objs);
}

fn put_class(b: &Bucket, key: &str, body: &[u8], class: StorageClass) {
    rt().block_on(
        b.client
            .put_object()
            .bucket(&b.name)
            .key(key)
            .storage_class(class)
            .body(body.to_vec().into())
            .send(),
    )
    .expect("put with a storage class");
}

/// Issue 18: objects in GLACIER / DEEP_ARCHIVE are `archived`, not failures; `--restore-archived`
/// asks for a restore once each, and a later run backs them up.
#[test]
fn archived_objects_are_not_failures_and_can_be_restored() {
    let b = Bucket::new(Kind::Moto, "archived");
    b.put("photos/new.jpg", b"fresh");
    put_class(
        &b,
        "photos/old.jpg",
        b"glacier bytes",
        StorageClass::Glacier,
    );
    put_class(
        &b,
        "photos/older.jpg",
        b"deep bytes",
        StorageClass::DeepArchive,
    );
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        j["archived"],
        serde_json::json!(["photos/old.jpg", "photos/older.jpg"])
    );
    assert_eq!(j["failed"], serde_json::json!([]));
    assert_eq!(
        (j["downloaded"].as_u64(), j["restore_requested"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(r.stderr().contains("2 archived"), "{}", r.stderr());
    assert_readable(&r);
    assert_eq!(tree(&s.dest).len(), 1);

    let r = backup(&b, &s, &["--restore-archived", "3"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["restore_requested"], 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("restore requested for 2"),
        "{}",
        r.stderr()
    );
    for key in ["photos/old.jpg", "photos/older.jpg"] {
        let head = rt()
            .block_on(b.client.head_object().bucket(&b.name).key(key).send())
            .unwrap();
        assert!(head.restore().is_some(), "{key}: no restore was requested");
    }
    // moto completes a restore at once: the next run backs both up like any other object.
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["downloaded"], 2, "{}", r.stderr());
    assert_eq!(r.json()["archived"], serde_json::json!([]));
    assert_eq!(
        fs::read(s.dest.join("photos/older.jpg")).unwrap(),
        b"deep bytes"
    );
    // A bad value names the flag.
    let r = backup(&b, &s, &["--restore-archived", "100000"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("--restore-archived"), "{}", r.stderr());
}

/// An object backed up before it moved to GLACIER stays unchanged, with no GET: a copy onto itself
/// with another storage class keeps the ETag and the size, so only the mtime follows LastModified.
#[test]
fn an_object_archived_after_its_backup_stays_unchanged_without_gets() {
    let b = Bucket::new(Kind::Moto, "archived-later");
    b.put("photos/a.jpg", b"backed up while it was STANDARD");
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    assert_eq!(backup_via(&proxy.endpoint, &b, &s, &[]).code(), 0);
    let before = fs::metadata(s.dest.join("photos/a.jpg"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    rt().block_on(
        b.client
            .copy_object()
            .bucket(&b.name)
            .key("photos/a.jpg")
            .copy_source(format!("{}/photos/a.jpg", b.name))
            .storage_class(StorageClass::Glacier)
            .send(),
    )
    .expect("copy onto itself into GLACIER");
    proxy.take();
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["unchanged"], 1, "{}", r.stderr());
    assert_eq!(r.json()["archived"], serde_json::json!([]));
    assert_eq!(object_gets(&proxy.take()), 0);
    let after = fs::metadata(s.dest.join("photos/a.jpg"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(after > before, "the mtime follows the new LastModified");
    assert_eq!(
        fs::read(s.dest.join("photos/a.jpg")).unwrap(),
        b"backed up while it was STANDARD"
    );
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.json()["unchanged"], 1);
    assert_eq!(object_gets(&proxy.take()), 0);
}

/// Issue 18: every line a person reads is short and free of the SDK's Debug dumps: each line on stderr,
/// and each string in the JSON document (stdout is one JSON line, as long as its lists of keys).
fn assert_readable(r: &Run) {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut lines: Vec<String> = r.stderr().lines().map(str::to_owned).collect();
    if !r.stdout().trim().is_empty() {
        strings(&r.json(), &mut lines);
    }
    for line in &lines {
        assert!(
            line.chars().count() <= 400,
            "a line of {} characters: {line}",
            line.len()
        );
    }
    for line in lines.iter().chain([&r.stdout()]) {
        for dump in [
            "ServiceError {",
            "raw: Response",
            "DispatchFailure(",
            "FailedToLoadToken",
            "ConnectorError",
        ] {
            assert!(!line.contains(dump), "SDK dump ({dump}) in: {line}");
        }
    }
}

/// The failure paths, each read as a person would: one line that names the key or endpoint, the HTTP
/// status and S3's code and message.
#[test]
fn every_failure_reads_as_one_short_line() {
    let b = Bucket::new(Kind::Seaweed, "readable");
    b.put("photos/a.jpg", &bytes(1, 5000));
    b.put("photos/b.jpg", &bytes(2, 5000));
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    // 403 on one object.
    proxy.arm(Fault::Forbidden, 100, "a.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_readable(&r);
    let err = r.json()["failed"][0]["error"].as_str().unwrap().to_owned();
    assert_eq!(err, "GET photos/a.jpg: 403 AccessDenied: Access Denied");
    // 503 until the retries run out.
    proxy.arm(Fault::SlowDown, 1000, "a.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_readable(&r);
    let err = r.json()["failed"][0]["error"].as_str().unwrap().to_owned();
    assert!(
        err.contains("GET photos/a.jpg: 503 SlowDown: Please reduce your request rate."),
        "{err}"
    );
    // A body that never verifies.
    proxy.arm(Fault::FlipByte, 1000, "a.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_readable(&r);
    proxy.disarm();
    // Missing bucket, unreachable endpoint, access denied on the listing: exit 2.
    let r = backup(&Bucket::missing(Kind::Seaweed, "gone"), &s, &[]);
    assert_eq!(r.code(), 2);
    assert_readable(&r);
    let r = backup_via("http://127.0.0.1:9", &b, &s, &[]);
    assert_eq!(r.code(), 2);
    assert_readable(&r);
    assert_eq!(
        r.json()["error"],
        format!(
            "listing bucket {}: cannot connect to http://127.0.0.1:9: connection refused",
            b.name
        )
    );
    let mut cmd = command(&s);
    cmd.env("AWS_SECRET_ACCESS_KEY", "wrong-secret");
    cmd.args(["--bucket", &b.name, "--endpoint-url", &b.endpoint, "--json"]);
    cmd.arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    let r = Run {
        output: cmd.output().unwrap(),
    };
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert_readable(&r);
    let err = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        err.starts_with(&format!("listing bucket {}: 403 ", b.name)),
        "{err}"
    );

    // A custom endpoint and no region anywhere: no IMDS lookup (its endpoint points at a closed port
    // on loopback, so a lookup would log its warnings here), us-east-1 signs.
    let mut cmd = command(&s);
    cmd.env_remove("AWS_REGION")
        .env_remove("AWS_EC2_METADATA_DISABLED");
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
    cmd.args(["--bucket", &b.name, "--endpoint-url", &b.endpoint, "--json"]);
    cmd.arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    let r = Run {
        output: cmd.output().unwrap(),
    };
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_readable(&r);
    assert!(!r.stderr().contains("IMDS"), "{}", r.stderr());
    assert!(!r.stderr().contains("region"), "{}", r.stderr());
}

#[test]
fn objects_deleted_in_s3_are_kept_locally() {
    let b = Bucket::new(Kind::Seaweed, "deleted");
    b.put("keep.jpg", b"precious");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    rt().block_on(
        b.client
            .delete_object()
            .bucket(&b.name)
            .key("keep.jpg")
            .send(),
    )
    .unwrap();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["listed"], 0);
    assert_eq!(fs::read(s.dest.join("keep.jpg")).unwrap(), b"precious");
}

#[test]
fn folder_markers_become_directories_and_never_count_as_downloads() {
    let b = Bucket::new(Kind::Moto, "markers");
    b.put("empty/", b"");
    b.put("nested/deeper/", b"");
    b.put("nested/deeper/file.jpg", b"x");
    // A zero-byte object that is not a marker: a file, whose temp file is made with no body to write.
    b.put("zero/bytes.bin", b"");
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        (
            j["listed"].as_u64(),
            j["downloaded"].as_u64(),
            j["folders"].as_u64()
        ),
        (Some(4), Some(2), Some(2))
    );
    assert!(s.dest.join("empty").is_dir());
    assert!(s.dest.join("nested/deeper").is_dir());
    let zero = std::fs::metadata(s.dest.join("zero/bytes.bin")).unwrap();
    assert!(zero.is_file() && zero.len() == 0);
    assert_eq!(tree(&s.dest).len(), 2, "two files, no temp file left");
}

#[test]
fn unsafe_keys_are_refused_by_name_on_every_run_and_nothing_leaves_dest() {
    let b = Bucket::new(Kind::Moto, "hostile");
    let long = "x".repeat(256);
    let refused = [
        "../escape.jpg",
        "../../etc/cron.d/evil",
        "/abs.jpg",
        "a//b.jpg",
        "a/./b.jpg",
        "a/../../up.jpg",
        "dir/..",
        &format!("long/{long}"),
        "notempty/",
        "d/.s3backup.tmp.fake",
    ];
    for k in refused {
        b.put(k, b"payload");
    }
    b.put("fine/ok.jpg", b"ok");
    let s = Scratch::new();
    for run in 0..2 {
        let r = backup(&b, &s, &[]);
        assert_eq!(r.code(), 1, "run {run}: {}", r.stderr());
        let mut got = r.refused_keys();
        got.sort();
        let mut want: Vec<String> = refused.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "run {run}");
        for k in refused {
            let shown = format!("refused {k:?}");
            assert!(
                r.stderr().contains(&shown),
                "summary names {k:?}: {}",
                r.stderr()
            );
        }
        let j = r.json();
        assert_eq!(j["listed"], refused.len() as u64 + 1);
        assert!(j["failed"].as_array().unwrap().is_empty());
        assert_eq!(tree(&s.dest).keys().collect::<Vec<_>>(), ["fine/ok.jpg"]);
        assert!(
            s.outside_dest().is_empty(),
            "written outside dest: {:?}",
            s.outside_dest()
        );
    }
}

#[test]
fn odd_but_legal_keys_are_stored_verbatim() {
    let b = Bucket::new(Kind::Moto, "verbatim");
    let keys = [
        "with space.jpg",
        "plus+and&eq=q?hash#pct%25'quote\"back\\slash.jpg",
        "ünïcödé/日本語/😀.png",
        "ctrl\u{1}\u{1f}\ttab.jpg",
        "...",
        "..hidden",
        "Case.JPG",
        "case.jpg",
        // Unicode normalisation twins: NFC and NFD spellings of "é" are two different keys and files.
        "caf\u{e9}.jpg",
        "cafe\u{301}.jpg",
        &"n".repeat(255),
    ];
    let objs: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), bytes(i as u64, 10 + i)))
        .collect();
    for (k, v) in &objs {
        b.put(k, v);
    }
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(tree(&s.dest), objs);
}

#[test]
fn spaces_and_plus_signs_survive_form_encoded_listings() {
    // SeaweedFS, like AWS, lists a space as '+' and a '+' as '%2B'.
    let b = Bucket::new(Kind::Seaweed, "plus");
    let objs: BTreeMap<String, Vec<u8>> =
        ["a b.jpg", "a+b.jpg", "100%.jpg", "dir with space/x+y z.jpg"]
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), bytes(i as u64, 5 + i)))
            .collect();
    b.put_many(&objs);
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(tree(&s.dest), objs);
}

#[test]
fn file_prefix_conflicts_resolve_the_same_way_every_run() {
    let b = Bucket::new(Kind::Moto, "conflict");
    b.put("a", b"file a");
    b.put("a/b.jpg", b"under a");
    b.put("a/", b"");
    b.put("a-sibling", b"s");
    let s = Scratch::new();
    for run in 0..2 {
        let r = backup(&b, &s, &[]);
        assert_eq!(r.code(), 1, "run {run}: {}", r.stderr());
        let mut got = r.refused_keys();
        got.sort();
        assert_eq!(got, ["a/", "a/b.jpg"], "run {run}");
        assert_eq!(fs::read(s.dest.join("a")).unwrap(), b"file a");
        assert_eq!(fs::read(s.dest.join("a-sibling")).unwrap(), b"s");
    }
    // An existing local file (its object since deleted) is never displaced by a new prefix.
    let b = Bucket::new(Kind::Moto, "conflict2");
    b.put("x", b"old file");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    rt().block_on(b.client.delete_object().bucket(&b.name).key("x").send())
        .unwrap();
    b.put("x/y", b"new");
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.refused_keys(), ["x/y"]);
    assert_eq!(fs::read(s.dest.join("x")).unwrap(), b"old file");
}

#[test]
fn prefix_limits_the_backup_and_keeps_full_keys() {
    let b = Bucket::new(Kind::Seaweed, "prefix");
    b.put("2024/a.jpg", b"a");
    b.put("2025/b.jpg", b"b");
    let s = Scratch::new();
    let r = backup(&b, &s, &["--prefix", "2025/"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(tree(&s.dest).keys().collect::<Vec<_>>(), ["2025/b.jpg"]);
}

#[test]
fn dry_run_writes_nothing() {
    let b = Bucket::new(Kind::Seaweed, "dry");
    b.put("a.jpg", b"a");
    b.put("d/", b"");
    let s = Scratch::new();
    let r = backup(&b, &s, &["--dry-run"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["would_download"], 1);
    assert!(
        r.json().get("downloaded").is_none(),
        "would_download takes its place"
    );
    assert!(!s.dest.exists());
    assert!(!s.state.exists());
}

#[test]
fn kill_9_mid_download_leaves_no_partial_file_and_rerun_converges() {
    let b = Bucket::new(Kind::Seaweed, "kill");
    let mib = 1024 * 1024;
    let big: Vec<Vec<u8>> = (0..12).map(|i| bytes(300 + i, 8 * mib)).collect();
    b.put_multipart("big.bin", &big, None);
    b.put("small.jpg", b"small");
    let s = Scratch::new();
    let mut cmd = command(&s);
    cmd.args([
        "--bucket",
        &b.name,
        "--endpoint-url",
        &b.endpoint,
        "--concurrency",
        "1",
    ]);
    cmd.arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let temp_seen = loop {
        // The big object's temp file (sized up front for its parts), not the empty writability probe.
        let temp = fs::read_dir(&s.dest)
            .map(|d| {
                d.filter_map(Result::ok).any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".s3backup.tmp.")
                        && e.metadata().is_ok_and(|m| m.len() > 0)
                })
            })
            .unwrap_or(false);
        if temp || std::time::Instant::now() > deadline {
            break temp;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(temp_seen, "never saw the download in progress");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !s.dest.join("big.bin").exists(),
        "no final file before it is complete"
    );

    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(r.json()["stale_temp_files_removed"].as_u64().unwrap() >= 1);
    let t = tree(&s.dest);
    assert_eq!(
        t.len(),
        2,
        "no temp files left: {:?}",
        t.keys().collect::<Vec<_>>()
    );
    assert_eq!(t["big.bin"], big.concat());
}

#[test]
fn a_second_run_into_the_same_dest_exits_75() {
    let b = Bucket::new(Kind::Seaweed, "lock");
    b.put("a.jpg", b"a");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    // Hold the lock the way a running backup does.
    let lock_dir = fs::read_dir(&s.state)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let lock = fs::File::open(lock_dir.join("lock")).unwrap();
    lock.try_lock().unwrap();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("another s3backup run")
    );
    // A different destination is not blocked.
    let other = Scratch::new();
    let r2 = common::backup_via(
        &b.endpoint,
        &b,
        &Scratch {
            state: s.state.clone(),
            ..other
        },
        &[],
    );
    assert_eq!(r2.code(), 0, "{}", r2.stderr());
    drop(lock);
    assert_eq!(backup(&b, &s, &[]).code(), 0);
}

#[test]
fn two_concurrent_runs_one_waits_out_with_75() {
    let b = Bucket::new(Kind::Seaweed, "concurrent");
    let mib = 1024 * 1024;
    let big: Vec<Vec<u8>> = (0..8).map(|i| bytes(400 + i, 8 * mib)).collect();
    b.put_multipart("big.bin", &big, None);
    let s = Scratch::new();
    let mut cmd = command(&s);
    cmd.args([
        "--bucket",
        &b.name,
        "--endpoint-url",
        &b.endpoint,
        "--concurrency",
        "1",
        "--json",
    ]);
    cmd.arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let first = cmd.spawn().unwrap();
    // Wait until the first run holds the lock (its in-progress marker exists).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running = fs::read_dir(&s.state)
            .ok()
            .and_then(|mut d| d.next())
            .is_some_and(|e| e.unwrap().path().join("running").exists());
        if running || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = backup(&b, &s, &[]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(second.code(), 75, "{}", second.stderr());
    assert_eq!(fs::read(s.dest.join("big.bin")).unwrap(), big.concat());
}

#[test]
fn configuration_errors_exit_2_with_one_json_object() {
    let b = Bucket::new(Kind::Seaweed, "cfg");
    let s = Scratch::new();
    // Missing bucket.
    let missing = Bucket::missing(Kind::Seaweed, "nope");
    let r = backup(&missing, &s, &[]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.json()["error"].as_str().unwrap().contains(&missing.name),
        "{}",
        r.stdout()
    );
    // Unwritable destination (under a regular file, so root cannot write there either).
    fs::create_dir_all(s.root.path().join("outer")).unwrap();
    let file = s.root.path().join("outer/plainfile");
    fs::write(&file, b"x").unwrap();
    let s2 = Scratch {
        dest: file.join("dest"),
        ..Scratch::new()
    };
    let r = backup(&b, &s2, &[]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.json()["error"].as_str().unwrap().contains("plainfile"),
        "{}",
        r.stdout()
    );
    // Bad flag value.
    let r = backup(&b, &s, &["--concurrency", "0"]);
    assert_eq!(r.code(), 2);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("--concurrency")
    );
    // Unknown flag: still exactly one JSON object.
    let r = backup(&b, &s, &["--no-such-flag"]);
    assert_eq!(r.code(), 2);
    assert!(r.json()["error"].is_string());
    // Unreachable endpoint (nothing listens on port 1).
    let r = backup_via("http://127.0.0.1:1", &b, &s, &[]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.json()["error"].as_str().unwrap().contains(&b.name));
}

#[test]
fn bucket_and_dest_come_from_the_environment_too() {
    let b = Bucket::new(Kind::Seaweed, "env");
    b.put("e.jpg", b"env");
    let s = Scratch::new();
    let out = command(&s)
        .env("S3BACKUP_BUCKET", &b.name)
        .env("S3BACKUP_DEST", &s.dest)
        .env("AWS_ENDPOINT_URL", &b.endpoint)
        .env("XDG_STATE_HOME", s.state.to_str().unwrap())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(s.dest.join("e.jpg")).unwrap(), b"env");
    assert!(
        s.state.join("s3backup").is_dir(),
        "XDG_STATE_HOME/s3backup is the default state dir"
    );
    let report = fs::read_dir(s.state.join("s3backup"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(report.join("last-run.json")).unwrap()).unwrap();
    assert_eq!(last["downloaded"], 1);
}

#[test]
fn help_documents_exit_codes_and_cron_entry_renders() {
    let s = Scratch::new();
    let out = command(&s).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for code in ["0 ", "1 ", "2 ", "75"] {
        assert!(
            help.contains(&format!("  {code}")),
            "--help lists exit code {code}: {help}"
        );
    }
    let out = command(&s)
        .args([
            "cron-entry",
            "--user",
            "user",
            "--bucket",
            "images",
            "--dest",
            "/home/user/myS3backup",
            "--region",
            "eu-west-1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("17 3 * * * user /usr/local/bin/s3backup --bucket images")),
        "{text}"
    );
    let out = command(&s)
        .args([
            "cron-entry",
            "--user",
            "root;rm",
            "--bucket",
            "images",
            "--dest",
            "/x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
}

/// A schedule cron would never run (or would refuse) is exit 2 with one line naming the field and the
/// value, and nothing on stdout that could be installed as a cron.d file.
#[test]
fn cron_entry_refuses_a_schedule_cron_would_never_run() {
    let s = Scratch::new();
    let cron_entry = |schedule: &str| {
        command(&s)
            .args(["cron-entry", "--user", "user", "--bucket", "images"])
            .args(["--dest", "/home/user/myS3backup", "--schedule", schedule])
            .output()
            .unwrap()
    };
    for (schedule, says) in [
        ("99 * * * *", "minute 99 is out of range 0-59"),
        ("0 3 * * 1-9", "day of week 9 is out of range 0-7"),
        ("*/0 3 * * *", "minute step */0 must be at least 1"),
        ("0 3 31-1 * *", "day of month range 31-1 runs backwards"),
        (
            "0 3 * smarch *",
            "month \"smarch\" is neither a number nor a name (jan-dec)",
        ),
    ] {
        let out = cron_entry(schedule);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{schedule:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{schedule:?}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: --schedule {schedule:?}: {says}")),
            "{schedule:?}: {stderr}"
        );
    }
    for schedule in ["*/15 1-5 * jan-jun mon-fri", "@weekly"] {
        let out = cron_entry(schedule);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{schedule} user /usr/local/bin/s3backup "))),
            "{text}"
        );
    }
}

#[test]
fn files_of_the_destination_are_never_touched_by_a_failed_run() {
    // A good copy stays when the new version cannot be fetched (the object became unreadable).
    let b = Bucket::new(Kind::Seaweed, "keepgood");
    b.put("img.jpg", b"good copy");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    let before = fs::metadata(s.dest.join("img.jpg")).unwrap();
    // Point at a server that lists nothing useful: the run fails early and must leave files alone.
    let r = backup_via("http://127.0.0.1:1", &b, &s, &[]);
    assert_eq!(r.code(), 2);
    let after = fs::metadata(s.dest.join("img.jpg")).unwrap();
    assert_eq!((before.ino(), before.mtime()), (after.ino(), after.mtime()));
    assert_eq!(fs::read(s.dest.join("img.jpg")).unwrap(), b"good copy");
}

#[test]
fn corrupt_bodies_are_retried_and_a_clean_retry_is_installed() {
    let b = Bucket::new(Kind::Seaweed, "flipretry");
    b.put("img.jpg", &bytes(1, 50_000));
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    proxy.arm(Fault::FlipByte, 2, "img.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(fs::read(s.dest.join("img.jpg")).unwrap(), bytes(1, 50_000));
    assert_eq!(
        object_gets(&proxy.take()),
        3,
        "two corrupt bodies, then a good one"
    );
}

/// A body that never verifies is reported by key, never installed, and the good copy from an earlier
/// run stays; the next clean run converges. For a single-part object (MD5 ETag), a multipart one
/// (ETag of part MD5s) and a multipart one uploaded with CRC32s (composite checksum).
#[test]
fn a_body_that_never_verifies_fails_by_key_and_keeps_the_old_copy() {
    let b = Bucket::new(Kind::Seaweed, "flipfail");
    let mib = 1024 * 1024;
    let v1_parts: Vec<Vec<u8>> = vec![bytes(10, 5 * mib), bytes(11, mib)];
    b.put("single.jpg", b"version one of the image");
    b.put_multipart("multi.bin", &v1_parts, None);
    b.put_multipart("multi-crc.bin", &v1_parts, Some(ChecksumAlgorithm::Crc32));
    b.put_md5_only("md5only.jpg", b"version one, md5 etag only");
    b.put("ok.jpg", b"fine");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);

    std::thread::sleep(Duration::from_millis(1100));
    b.put("single.jpg", b"version two of the image");
    b.put_md5_only("md5only.jpg", b"version two, md5 etag only");
    let v2_parts: Vec<Vec<u8>> = vec![bytes(20, 5 * mib), bytes(21, mib)];
    b.put_multipart("multi.bin", &v2_parts, None);
    b.put_multipart("multi-crc.bin", &v2_parts, Some(ChecksumAlgorithm::Crc32));
    let proxy = Proxy::start(&b.endpoint);
    // Every object GET is damaged: both changed objects fail, by name, and nothing else changes.
    proxy.arm(Fault::FlipByte, usize::MAX, "");
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let mut failed = r.failed_keys();
    failed.sort();
    assert_eq!(
        failed,
        ["md5only.jpg", "multi-crc.bin", "multi.bin", "single.jpg"]
    );
    for f in r.json()["failed"].as_array().unwrap() {
        let (key, err) = (f["key"].as_str().unwrap(), f["error"].as_str().unwrap());
        assert!(err.contains("mismatch"), "{key}: {err}");
        if key == "md5only.jpg" {
            assert!(
                err.contains("md5 (etag) mismatch"),
                "verified by its MD5 ETag: {err}"
            );
        }
        if key == "multi-crc.bin" {
            assert!(
                err.contains("crc32 (composite) mismatch"),
                "verified by its composite CRC32, not the MD5 ETag: {err}"
            );
        }
        assert!(
            r.stderr().contains(&format!("failed {key:?}")),
            "{}",
            r.stderr()
        );
    }
    assert_eq!(r.json()["unchanged"], 1);
    assert_eq!(tree(&s.dest).len(), 5, "no temp file left, nothing lost");
    assert_eq!(
        fs::read(s.dest.join("md5only.jpg")).unwrap(),
        b"version one, md5 etag only"
    );
    assert_eq!(
        fs::read(s.dest.join("single.jpg")).unwrap(),
        b"version one of the image"
    );
    assert_eq!(
        fs::read(s.dest.join("multi.bin")).unwrap(),
        v1_parts.concat()
    );
    assert_eq!(
        fs::read(s.dest.join("multi-crc.bin")).unwrap(),
        v1_parts.concat()
    );

    proxy.disarm();
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        fs::read(s.dest.join("single.jpg")).unwrap(),
        b"version two of the image"
    );
    assert_eq!(
        fs::read(s.dest.join("multi.bin")).unwrap(),
        v2_parts.concat()
    );
    assert_eq!(
        fs::read(s.dest.join("multi-crc.bin")).unwrap(),
        v2_parts.concat()
    );
    assert_eq!(
        fs::read(s.dest.join("md5only.jpg")).unwrap(),
        b"version two, md5 etag only"
    );
    assert_eq!(r.json()["unverified"], 0);
}

#[test]
fn truncated_and_reset_bodies_and_slowdown_are_retried() {
    let b = Bucket::new(Kind::Seaweed, "truncate");
    b.put("a.jpg", &bytes(2, 80_000));
    b.put("b.jpg", &bytes(3, 80_000));
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    proxy.arm(Fault::Truncate, 1, "a.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &["--concurrency", "1"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(fs::read(s.dest.join("a.jpg")).unwrap(), bytes(2, 80_000));
    let gets_of_a = |lines: Vec<String>| {
        lines
            .iter()
            .filter(|l| l.starts_with("GET ") && l.contains("/a.jpg"))
            .count()
    };
    assert_eq!(
        gets_of_a(proxy.take()),
        2,
        "one truncated body, then a good one"
    );
    fs::remove_file(s.dest.join("a.jpg")).unwrap();
    proxy.arm(Fault::Reset, 2, "a.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &["--concurrency", "1"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        gets_of_a(proxy.take()),
        3,
        "two reset connections, then a good body"
    );
    proxy.arm(Fault::SlowDown, 3, "b.jpg");
    fs::remove_file(s.dest.join("b.jpg")).unwrap();
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(fs::read(s.dest.join("a.jpg")).unwrap(), bytes(2, 80_000));
    assert_eq!(fs::read(s.dest.join("b.jpg")).unwrap(), bytes(3, 80_000));
}

/// Retries do not multiply: an object whose every GET fails costs a bounded number of requests (4 for a
/// single GET; 10 failures in all for a multipart object, its parts' retries and the object's own
/// attempts together, plus at most one part request already in flight at `--concurrency 2`), a few
/// seconds, and the run goes on with the rest. Before the bound, each part could be asked for 4 (object)
/// x 4 (part) x 5 (SDK) = 80 times.
#[test]
fn a_permanently_failing_object_costs_a_bounded_number_of_requests() {
    let b = Bucket::new(Kind::Seaweed, "retrybound");
    let mib = 1024 * 1024;
    let parts = vec![bytes(30, 5 * mib), bytes(31, 5 * mib), bytes(32, mib)];
    b.put_multipart("broken-multi.bin", &parts, None);
    b.put("broken-single.jpg", &bytes(33, 70_000));
    b.put("fine.jpg", &bytes(34, 70_000));
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    proxy.arm(Fault::SlowDown, usize::MAX, "/broken-");
    let started = Instant::now();
    let r = backup_via(&proxy.endpoint, &b, &s, &["--concurrency", "2"]);
    let elapsed = started.elapsed();
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let gets_of = |lines: &[String], key: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with("GET ") && l.contains(&format!("/{key}")))
            .count()
    };
    let lines = proxy.take();
    assert_eq!(
        gets_of(&lines, "broken-single.jpg"),
        4,
        "a single GET: 4 attempts, no SDK retries under them"
    );
    let multi = gets_of(&lines, "broken-multi.bin");
    assert!(
        (10..=11).contains(&multi),
        "multipart: 10 failures in all, and one more part GET in flight at most; got {multi}"
    );
    let mut failed = r.failed_keys();
    failed.sort();
    assert_eq!(failed, ["broken-multi.bin", "broken-single.jpg"]);
    for f in r.json()["failed"].as_array().unwrap() {
        let err = f["error"].as_str().unwrap();
        assert!(err.starts_with("giving up after "), "{err}");
        assert!(err.contains(": 503 SlowDown: "), "{err}");
    }
    assert_eq!(
        fs::read(s.dest.join("fine.jpg")).unwrap(),
        bytes(34, 70_000),
        "the run went on with the rest"
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "a broken object costs seconds here, not minutes: {elapsed:?}"
    );
}

#[test]
fn access_denied_on_listing_exits_2_and_on_one_object_fails_only_that_key() {
    let b = Bucket::new(Kind::Seaweed, "denied");
    b.put("open.jpg", b"readable");
    b.put("secret.jpg", b"forbidden");
    let s = Scratch::new();
    // Wrong secret: the listing itself is refused.
    let out = command(&s)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["--bucket", &b.name, "--endpoint-url", &b.endpoint, "--json"])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state)
        .output()
        .unwrap();
    let r = Run { output: out };
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let err = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        err.starts_with(&format!(
            "listing bucket {}: 403 SignatureDoesNotMatch: ",
            b.name
        )),
        "{err}"
    );
    assert!(tree(&s.dest).is_empty());
    // One object the server refuses to hand out: that key fails by name, the other is backed up.
    let proxy = Proxy::start(&b.endpoint);
    proxy.arm(Fault::Forbidden, usize::MAX, "secret.jpg");
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(r.failed_keys(), ["secret.jpg"]);
    assert!(
        r.json()["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("AccessDenied")
    );
    assert_eq!(tree(&s.dest).keys().collect::<Vec<_>>(), ["open.jpg"]);
    assert_eq!(
        object_gets(&proxy.take()),
        2,
        "access denied is not retried: one GET each"
    );
}

/// kill -9 at many moments of many runs: after every kill, each final file is absent or complete and
/// correct; the next clean run removes our temp files and converges to the exact tree.
#[test]
fn repeated_kill_9_never_leaves_a_partial_final_file() {
    let b = Bucket::new(Kind::Seaweed, "crashes");
    let mib = 1024 * 1024;
    let mut objs: BTreeMap<String, Vec<u8>> = (0..60)
        .map(|i| {
            (
                format!("small/{i:03}.jpg"),
                bytes(900 + i, 20_000 + i as usize),
            )
        })
        .collect();
    objs.insert("large.bin".into(), bytes(999, 40 * mib));
    b.put_many(&objs);
    let parts: Vec<Vec<u8>> = (0..4).map(|i| bytes(950 + i, 6 * mib)).collect();
    b.put_multipart("multi.bin", &parts, None);
    objs.insert("multi.bin".into(), parts.concat());

    let s = Scratch::new();
    let mut kills = 0;
    for round in 0..12u64 {
        let mut cmd = command(&s);
        cmd.args([
            "--bucket",
            &b.name,
            "--endpoint-url",
            &b.endpoint,
            "--concurrency",
            "4",
        ]);
        cmd.arg("--dest")
            .arg(&s.dest)
            .arg("--state-dir")
            .arg(&s.state);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        // Spread the kills over a run's life: 5 ms to ~400 ms.
        std::thread::sleep(Duration::from_millis(
            5 + (round * 97 + round * round * 13) % 400,
        ));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        for (rel, data) in tree(&s.dest) {
            if rel.contains(".s3backup.tmp.") {
                continue; // a killed run's temp file: removed by the next run
            }
            assert_eq!(
                Some(&data),
                objs.get(&rel),
                "round {round}: {rel} is partial or wrong"
            );
        }
        // Each round also deletes a few finished files, so later rounds have work to be killed in.
        for k in ["large.bin", "multi.bin", "small/007.jpg"] {
            let _ = fs::remove_file(s.dest.join(k));
        }
    }
    assert!(kills >= 6, "only {kills} runs were killed mid-way");
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(tree(&s.dest), objs, "converged, no temp files left");
}

/// A full file system and a read-only directory: clear errors naming the path, no partial final file,
/// no temp file left. Runs the binary in a private mount namespace with a 2 MiB tmpfs as destination.
#[test]
fn disk_full_and_read_only_directories_fail_cleanly() {
    let b = Bucket::new(Kind::Seaweed, "diskfull");
    b.put("a/fits.jpg", &bytes(1, 100_000));
    b.put("b/too-big.bin", &bytes(2, 3 * 1024 * 1024));
    b.put("ro/blocked.jpg", &bytes(3, 1000));
    let s = Scratch::new();
    fs::create_dir_all(&s.dest).unwrap();
    let script = r#"set -e
mount -t tmpfs -o size=2m,mode=0700 tmpfs "$DEST"
mkdir "$DEST/ro"
mount --bind "$DEST/ro" "$DEST/ro"
mount -o remount,bind,ro "$DEST/ro"
set +e
"$BIN" --bucket "$BUCKET" --endpoint-url "$EP" --dest "$DEST" --state-dir "$STATE" --json --concurrency 1
echo "exit=$?" >&2
find "$DEST" -mindepth 1 -printf '%y %s %P\n' >&2
"#;
    let Some(r) = in_mount_namespace(
        "disk_full_and_read_only_directories_fail_cleanly",
        &s,
        &b,
        script,
        &[],
    ) else {
        return;
    };
    let err = r.stderr();
    assert!(err.contains("exit=1"), "{err}");
    let mut failed = r.failed_keys();
    failed.sort();
    assert_eq!(failed, ["b/too-big.bin", "ro/blocked.jpg"], "{err}");
    for f in r.json()["failed"].as_array().unwrap() {
        let (key, msg) = (f["key"].as_str().unwrap(), f["error"].as_str().unwrap());
        let want = if key.starts_with("b/") {
            "No space left on device"
        } else {
            "Read-only file system"
        };
        assert!(msg.contains(want) && msg.contains(key), "{key}: {msg}");
    }
    assert!(
        err.contains("f 100000 a/fits.jpg"),
        "the file that fits is complete: {err}"
    );
    assert!(
        !err.lines()
            .any(|l| l.starts_with("f ") && l.ends_with("too-big.bin")),
        "no partial final file: {err}"
    );
    assert!(
        !err.lines()
            .any(|l| l.starts_with("f ") && l.contains(".s3backup.tmp.")),
        "no temp file left: {err}"
    );
}

/// An object overwritten while its parts are being fetched is never stitched from two versions:
/// every part GET carries If-Match, the server answers 412, and s3backup fetches the new version.
#[test]
fn an_object_overwritten_mid_download_is_not_stitched() {
    let b = Bucket::new(Kind::Seaweed, "midchange");
    let mib = 1024 * 1024;
    let v1: Vec<Vec<u8>> = (0..3).map(|i| bytes(60 + i, 5 * mib)).collect();
    let v2: Vec<Vec<u8>> = (0..3).map(|i| bytes(70 + i, 5 * mib)).collect();
    b.put_multipart("photo.raw", &v1, None);
    let s = Scratch::new();
    let proxy = Proxy::start(&b.endpoint);
    let (bucket_client, name, v2_clone) = (b.client.clone(), b.name.clone(), v2.clone());
    proxy.hook_once(
        "partNumber=3",
        Arc::new(move || {
            let other = Bucket {
                kind: Kind::Seaweed,
                name: name.clone(),
                endpoint: String::new(),
                client: bucket_client.clone(),
            };
            other.put_multipart("photo.raw", &v2_clone, None);
        }),
    );
    let r = backup_via(&proxy.endpoint, &b, &s, &["--concurrency", "1"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        r.stderr().contains("changed since listed"),
        "{}",
        r.stderr()
    );
    assert_eq!(fs::read(s.dest.join("photo.raw")).unwrap(), v2.concat());
    let lines = proxy.take();
    assert!(
        lines.iter().any(|l| l.contains("partNumber=3")),
        "{lines:?}"
    );
}

/// The history folder of a scratch area: beside `dest`, on the same file system.
fn history_dir(s: &Scratch) -> std::path::PathBuf {
    s.root.path().join("history")
}

/// Every file under the history folder, keyed by `<run-id>/<relative path>`.
fn history_files(s: &Scratch) -> BTreeMap<String, Vec<u8>> {
    tree(&history_dir(s))
}

/// Issue 15: what the bucket overwrote or deleted is kept, byte for byte, and `--dest` mirrors the bucket.
#[test]
fn history_keeps_overwritten_and_deleted_files_and_dest_mirrors_the_bucket() {
    let b = Bucket::new(Kind::Seaweed, "history");
    let v1: BTreeMap<String, Vec<u8>> = (0..6)
        .map(|i| (format!("photos/{i}.jpg"), bytes(10 + i, 3000)))
        .collect();
    b.put_many(&v1);
    let s = Scratch::new();
    let h = history_dir(&s);
    let hist = ["--history-dir", h.to_str().unwrap()];
    let r = backup(&b, &s, &hist);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        !h.exists() || history_files(&s).is_empty(),
        "nothing to keep yet"
    );
    assert_eq!(
        fs::metadata(&h).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A broken upload job overwrites one photo and another is deleted.
    b.put("photos/1.jpg", b"broken");
    rt().block_on(
        b.client
            .delete_object()
            .bucket(&b.name)
            .key("photos/4.jpg")
            .send(),
    )
    .unwrap();
    let r = backup(&b, &s, &hist);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        (
            j["replaced_to_history"].as_u64(),
            j["deleted_to_history"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(j["max_delete_blocked"], serde_json::Value::Null);
    let kept = history_files(&s);
    assert_eq!(kept.len(), 2, "{:?}", kept.keys());
    let run = kept
        .keys()
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(run.len(), 16, "run-id is YYYYMMDDTHHMMSSZ: {run}");
    assert_eq!(kept[&format!("{run}/photos/1.jpg")], v1["photos/1.jpg"]);
    assert_eq!(kept[&format!("{run}/photos/4.jpg")], v1["photos/4.jpg"]);
    let mut now = v1.clone();
    now.insert("photos/1.jpg".into(), b"broken".to_vec());
    now.remove("photos/4.jpg");
    assert_eq!(tree(&s.dest), now, "--dest mirrors the bucket");

    // A run that changes nothing makes no run folder.
    let r = backup(&b, &s, &hist);
    assert_eq!(r.json()["downloaded"], 0);
    assert_eq!(fs::read_dir(&h).unwrap().count(), 1);

    // Without --history-dir nothing changes from before: deleted objects stay.
    rt().block_on(
        b.client
            .delete_object()
            .bucket(&b.name)
            .key("photos/5.jpg")
            .send(),
    )
    .unwrap();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0);
    assert!(s.dest.join("photos/5.jpg").exists());
}

#[test]
fn max_delete_blocks_a_mass_deletion_and_moves_nothing() {
    let b = Bucket::new(Kind::Seaweed, "maxdelete");
    let objs: BTreeMap<String, Vec<u8>> = (0..10)
        .map(|i| (format!("d/{i}.jpg"), bytes(i, 500)))
        .collect();
    b.put_many(&objs);
    let s = Scratch::new();
    let h = history_dir(&s);
    let hist = ["--history-dir", h.to_str().unwrap()];
    assert_eq!(backup(&b, &s, &hist).code(), 0);
    for i in 0..6 {
        rt().block_on(
            b.client
                .delete_object()
                .bucket(&b.name)
                .key(format!("d/{i}.jpg"))
                .send(),
        )
        .unwrap();
    }
    b.put("d/new.jpg", b"new");
    let r = backup(&b, &s, &hist);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(r.json()["max_delete_blocked"], 6);
    assert_eq!(r.json()["deleted_to_history"], 0);
    assert!(
        r.stderr().contains("6 files are gone") && r.stderr().contains("--max-delete 50%"),
        "{}",
        r.stderr()
    );
    let mut expected = objs.clone();
    expected.insert("d/new.jpg".into(), b"new".to_vec());
    assert_eq!(tree(&s.dest), expected, "nothing moved, the rest backed up");
    assert!(history_files(&s).is_empty());
    // Accepting it: 6 of 11 is within 60%.
    let r = backup(
        &b,
        &s,
        &["--history-dir", h.to_str().unwrap(), "--max-delete", "60"],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["deleted_to_history"], 6);
    assert_eq!(history_files(&s).len(), 6);
    assert_eq!(tree(&s.dest).len(), 5);
}

#[test]
fn old_history_runs_are_pruned_and_a_bad_history_dir_is_refused() {
    let b = Bucket::new(Kind::Seaweed, "prune");
    b.put("a.jpg", b"a");
    let s = Scratch::new();
    let h = history_dir(&s);
    fs::create_dir_all(h.join("20200101T000000Z/x")).unwrap();
    fs::write(h.join("20200101T000000Z/x/old.jpg"), b"old").unwrap();
    let recent = s3backup::history::run_id(SystemTime::now() - Duration::from_secs(2 * 86_400));
    fs::create_dir_all(h.join(&recent)).unwrap();
    fs::create_dir_all(h.join("notes")).unwrap();
    let r = backup(
        &b,
        &s,
        &["--history-dir", h.to_str().unwrap(), "--keep-days", "30"],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["history_pruned_runs"], 1);
    assert!(!h.join("20200101T000000Z").exists());
    assert!(h.join(&recent).exists() && h.join("notes").exists());
    let r = backup(
        &b,
        &s,
        &["--history-dir", h.to_str().unwrap(), "--keep-days", "1"],
    );
    assert_eq!(r.json()["history_pruned_runs"], 1);
    assert!(!h.join(&recent).exists());

    // Inside the destination, or around it: exit 2, naming both.
    for bad in [s.dest.join("hist"), s.root.path().to_path_buf()] {
        let r = backup(&b, &s, &["--history-dir", bad.to_str().unwrap()]);
        assert_eq!(r.code(), 2, "{}", r.stderr());
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(e.contains("--history-dir") && e.contains("--dest"), "{e}");
    }
}

/// A kill at any instant around the move to history and the rename of the new version leaves every old
/// version in `--dest` or in history, never neither, and the next run completes the new one.
#[test]
fn kill_9_around_history_moves_never_loses_a_version() {
    let b = Bucket::new(Kind::Seaweed, "histcrash");
    let v1: BTreeMap<String, Vec<u8>> = (0..80)
        .map(|i| (format!("p/{i:03}.jpg"), bytes(2000 + i, 30_000)))
        .collect();
    b.put_many(&v1);
    let s = Scratch::new();
    let h = history_dir(&s);
    let hist = ["--history-dir", h.to_str().unwrap()];
    assert_eq!(backup(&b, &s, &hist).code(), 0);
    let mut kills = 0;
    for round in 0..10u64 {
        // A new version of every object, then a run killed somewhere in its life.
        let vn: BTreeMap<String, Vec<u8>> = v1
            .keys()
            .enumerate()
            .map(|(i, k)| (k.clone(), bytes(3000 + round * 100 + i as u64, 30_000)))
            .collect();
        let before = tree(&s.dest);
        b.put_many(&vn);
        let mut cmd = command(&s);
        cmd.args([
            "--bucket",
            &b.name,
            "--endpoint-url",
            &b.endpoint,
            "--concurrency",
            "4",
        ]);
        cmd.args(hist);
        cmd.arg("--dest")
            .arg(&s.dest)
            .arg("--state-dir")
            .arg(&s.state);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(20 + (round * 53) % 250));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        // Every version the destination held before the run is now in --dest or in history.
        let kept: Vec<Vec<u8>> = history_files(&s).into_values().collect();
        let now = tree(&s.dest);
        for (rel, old) in &before {
            let in_dest = now.get(rel) == Some(old);
            assert!(
                in_dest || kept.contains(old),
                "round {round}: the old {rel} is neither in --dest nor in history"
            );
            if let Some(data) = now.get(rel) {
                assert!(
                    data == old || Some(data) == vn.get(rel),
                    "round {round}: {rel} is partial"
                );
            }
        }
        // The next run completes the new versions.
        let r = backup(&b, &s, &hist);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert_eq!(tree(&s.dest), vn, "round {round}: converged");
    }
    assert!(kills >= 5, "only {kills} runs were killed mid-way");
}

fn verify_run(s: &Scratch, extra: &[&str]) -> Run {
    let mut cmd = command(s);
    cmd.arg("verify")
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    cmd.arg("--json").args(extra);
    Run {
        output: cmd.output().expect("run s3backup verify"),
    }
}

/// Issue 15: `verify` finds a flipped byte (size and mtime restored), a truncated file and a deleted one,
/// by key, with no network; the next backup fetches them again.
#[test]
fn verify_finds_rot_truncation_and_deletion_and_the_next_run_repairs_them() {
    let b = Bucket::new(Kind::Seaweed, "verify");
    let objs = images(8, 5000);
    b.put_many(&objs);
    b.put("empty/", b"");
    let s = Scratch::new();
    let r = verify_run(&s, &[]);
    assert_eq!(r.code(), 2, "no catalog yet: {}", r.stderr());
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    let r = verify_run(&s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        (r.json()["checked"].as_u64(), r.json()["ok"].as_u64()),
        (Some(9), Some(9))
    );
    let total: usize = objs.values().map(Vec::len).sum();
    assert_eq!(r.json()["bytes_read"], total as u64);

    let keys: Vec<&String> = objs.keys().collect();
    // Bit rot: one byte flipped, size and mtime as they were.
    let rot = s.dest.join(keys[1]);
    let mtime = fs::metadata(&rot).unwrap().modified().unwrap();
    let mut data = fs::read(&rot).unwrap();
    data[2500] ^= 0x01;
    fs::write(&rot, &data).unwrap();
    fs::File::options()
        .write(true)
        .open(&rot)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // A truncated file and a deleted one.
    fs::write(s.dest.join(keys[3]), b"short").unwrap();
    fs::remove_file(s.dest.join(keys[5])).unwrap();
    let r = verify_run(&s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["corrupt"], serde_json::json!([keys[1]]));
    assert_eq!(j["modified"], serde_json::json!([keys[3]]));
    assert_eq!(j["missing"], serde_json::json!([keys[5]]));
    assert_eq!(j["ok"], 6);
    let r = verify_run(&s, &["--prefix", keys[1]]);
    assert_eq!(r.json()["checked"], 1);

    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        r.json()["downloaded"],
        3,
        "the damaged files are fetched again"
    );
    assert_eq!(tree(&s.dest), objs);
    assert_eq!(verify_run(&s, &[]).code(), 0);
}

/// A file adopted without a checksum gets one at its first verify; rot after that is found.
#[test]
fn verify_records_a_checksum_for_adopted_files() {
    let b = Bucket::new(Kind::Seaweed, "verify-adopt");
    b.put("a.jpg", &bytes(5, 4000));
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    let cat = catalog_file(&s);
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", cat.display()));
    }
    assert_eq!(backup(&b, &s, &[]).json()["unchanged"], 1);
    assert_eq!(verify_run(&s, &[]).code(), 0);
    let f = s.dest.join("a.jpg");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    let mut data = fs::read(&f).unwrap();
    data[0] ^= 0xff;
    fs::write(&f, &data).unwrap();
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let r = verify_run(&s, &[]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.json()["corrupt"], serde_json::json!(["a.jpg"]));
}

/// Issue 15: a backup of hostile keys restored into an empty bucket recreates the same keys, byte for
/// byte (folder markers included); refused keys stay refused; a second restore finds all identical.
#[test]
fn restore_round_trips_hostile_keys_into_an_empty_bucket() {
    let b = Bucket::new(Kind::Moto, "restore-src");
    let objs = hostile_objects(true);
    for (k, v) in &objs {
        b.put(k, v);
    }
    b.put("../refused.jpg", b"never backed up");
    let s = Scratch::new();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 1, "one refused key: {}", r.stderr());

    let empty = Bucket::new(Kind::Moto, "restore-dst");
    let r = restore_run(&s, &empty, &["--dry-run"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["would_upload"], objs.len());
    assert!(r.json().get("uploaded").is_none(), "{}", r.stdout());
    assert!(
        bucket_contents(&empty).is_empty(),
        "a dry run uploads nothing"
    );
    let r = restore_run(&s, &empty, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["uploaded"], objs.len(), "{}", r.stdout());
    assert_eq!(bucket_contents(&empty), objs, "same keys, same bytes");
    let r = restore_run(&s, &empty, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        (
            r.json()["uploaded"].as_u64(),
            r.json()["identical"].as_u64()
        ),
        (Some(0), Some(objs.len() as u64))
    );
}

/// `--from-history` puts back what a run overwrote; an object with other bytes is a conflict, untouched,
/// unless --overwrite. Large files go up in parts.
#[test]
fn restore_from_history_conflicts_and_multipart() {
    let b = Bucket::new(Kind::Seaweed, "restore-hist");
    let good: BTreeMap<String, Vec<u8>> = (0..4)
        .map(|i| (format!("img/{i}.jpg"), bytes(70 + i, 6000)))
        .collect();
    b.put_many(&good);
    let big = bytes(77, 21 * 1024 * 1024 + 5);
    b.put("big.bin", &big);
    let s = Scratch::new();
    let h = history_dir(&s);
    let hist = ["--history-dir", h.to_str().unwrap()];
    assert_eq!(backup(&b, &s, &hist).code(), 0);
    // The broken upload job.
    for k in good.keys() {
        b.put(k, b"broken");
    }
    assert_eq!(backup(&b, &s, &hist).json()["replaced_to_history"], 4);
    let run = fs::read_dir(&h)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let run = run.to_str().unwrap();

    let r = restore_run(&s, &b, &["--from-history", run]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let mut conflicts: Vec<String> = r.json()["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    conflicts.sort();
    assert_eq!(conflicts, good.keys().cloned().collect::<Vec<_>>());
    assert_eq!(bucket_contents(&b)["img/0.jpg"], b"broken", "untouched");
    let r = restore_run(&s, &b, &["--from-history", run, "--overwrite"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["uploaded"], 4);
    let now = bucket_contents(&b);
    for (k, v) in &good {
        assert_eq!(&now[k], v, "{k} is the version before the broken upload");
    }
    let r = restore_run(&s, &b, &["--from-history", "not-a-run"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("--from-history"), "{}", r.stderr());

    // The whole backup into an empty bucket: big.bin in 5 MiB parts, each with its Content-MD5.
    let empty = Bucket::new(Kind::Seaweed, "restore-mp");
    let r = restore_run(&s, &empty, &["--part-size", "5"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        empty.etag("big.bin").ends_with("-5\""),
        "{}",
        empty.etag("big.bin")
    );
    assert_eq!(bucket_contents(&empty)["big.bin"], big);
    let r = restore_run(&s, &empty, &["--part-size", "5"]);
    assert_eq!(
        r.json()["identical"],
        5,
        "the multipart ETag is recognised: {}",
        r.stdout()
    );
}
