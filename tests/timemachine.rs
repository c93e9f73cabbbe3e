//! Issue 24, the time machine: `--versions` keeps every version a versioned bucket holds, and `ls`,
//! `versions`, `restore --as-of` and `restore --to-dir --as-of` give the bucket as it was at any instant.
//! Against moto (the local server with S3 versioning), through the real binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use common::*;

fn enable_versioning(b: &Bucket) {
    rt().block_on(
        b.client
            .put_bucket_versioning()
            .bucket(&b.name)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send(),
    )
    .unwrap();
}

fn delete(b: &Bucket, key: &str) {
    rt().block_on(b.client.delete_object().bucket(&b.name).key(key).send())
        .unwrap();
}

fn history(s: &Scratch) -> PathBuf {
    s.root.path().join("history")
}

fn versioned_backup(b: &Bucket, s: &Scratch, extra: &[&str]) -> Run {
    let h = history(s);
    let mut args = vec!["--versions", "--history-dir", h.to_str().unwrap()];
    args.extend_from_slice(extra);
    backup(b, s, &args)
}

fn rfc3339(t: SystemTime) -> String {
    s3backup::status::timestamp(t)
}

/// Every version the bucket holds: (key, version id) -> bytes.
fn all_versions(b: &Bucket) -> BTreeMap<(String, String), Vec<u8>> {
    let out = rt()
        .block_on(b.client.list_object_versions().bucket(&b.name).send())
        .unwrap();
    assert_ne!(out.is_truncated(), Some(true), "one page is enough here");
    out.versions()
        .iter()
        .map(|v| {
            let (k, id) = (v.key().unwrap(), v.version_id().unwrap());
            let body = rt()
                .block_on(
                    b.client
                        .get_object()
                        .bucket(&b.name)
                        .key(k)
                        .version_id(id)
                        .send(),
                )
                .unwrap()
                .body;
            let data = rt().block_on(body.collect()).unwrap().into_bytes().to_vec();
            ((k.to_owned(), id.to_owned()), data)
        })
        .collect()
}

/// What the backup holds for each version of each key (`versions KEY --json`): (key, version id) ->
/// the bytes of the file it names, and the file's path.
fn held_versions(s: &Scratch, keys: &[&str]) -> BTreeMap<(String, String), (Vec<u8>, String)> {
    let mut out = BTreeMap::new();
    for k in keys {
        let r = sub(s, "versions", &[k]);
        if r.code() != 0 {
            continue;
        }
        for v in r.json()["versions"].as_array().unwrap() {
            if v["delete_marker"] == true || v["damaged"] == true {
                continue;
            }
            let path = v["path"].as_str().unwrap().to_owned();
            let id = v["version_id"].as_str().unwrap_or("-").to_owned();
            let data = std::fs::read(&path).unwrap_or_default();
            out.insert((k.to_string(), id), (data, path));
        }
    }
    out
}

/// Wait for the next whole second and a little more: S3's LastModified has whole seconds, so instants
/// recorded between changes fall strictly between their seconds.
fn next_second() {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
    std::thread::sleep(left + Duration::from_millis(150));
}

/// The proof: a bucket changed between two runs, recorded at six instants; afterwards every
/// version's bytes are held, and `ls --as-of`, `restore --to-dir --as-of` and `restore --as-of` into an
/// empty bucket reproduce each recorded state exactly.
#[test]
fn every_version_is_held_and_every_recorded_instant_comes_back() {
    let b = Bucket::new(Kind::Moto, "tm");
    enable_versioning(&b);
    let s = Scratch::new();
    let mut recorded: Vec<(SystemTime, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut record = |b: &Bucket| {
        next_second();
        recorded.push((SystemTime::now(), bucket_contents(b)));
        next_second();
    };
    b.put("a.jpg", b"a1");
    b.put("c.jpg", b"c1");
    b.put("d.jpg", b"d1 untouched");
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["versioning"], "Enabled");
    record(&b); // T0
    b.put("a.jpg", b"a2 second");
    b.put("b.jpg", b"b1 short-lived");
    record(&b); // T1
    b.put("a.jpg", b"a3 third!");
    b.put("c.jpg", b"c2");
    record(&b); // T2
    delete(&b, "b.jpg");
    b.put("c.jpg", b"c3 last");
    record(&b); // T3
    delete(&b, "a.jpg");
    record(&b); // T4
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["delete_markers"], 2, "{j}");
    record(&b); // T5

    // Every version the bucket holds, byte-exact, each with its own file.
    let bucket = all_versions(&b);
    assert_eq!(bucket.len(), 8, "a x3, b, c x3, d");
    let held = held_versions(&s, &["a.jpg", "b.jpg", "c.jpg", "d.jpg"]);
    for ((k, id), bytes) in &bucket {
        let (got, path) = held
            .get(&(k.clone(), id.clone()))
            .unwrap_or_else(|| panic!("version {id} of {k} is not held: {held:?}"));
        assert_eq!(got, bytes, "{k} {id} at {path}");
    }
    let paths: std::collections::BTreeSet<_> = held.values().map(|(_, p)| p.clone()).collect();
    assert_eq!(paths.len(), held.len(), "one file per version");
    // Intervals: a's first version was current until its second began.
    let a = sub(&s, "versions", &["a.jpg"]).json();
    let versions = a["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "three versions and a delete marker: {a}");
    assert_eq!(versions[0]["delete_marker"], true);
    for pair in versions.windows(2) {
        assert_eq!(
            pair[1]["current_until"], pair[0]["current_from"],
            "each version ends where the next began: {a}"
        );
        assert_eq!(pair[1]["precision"], "second", "{a}");
    }

    // The bucket at each recorded instant.
    for (i, (t, want)) in recorded.iter().enumerate() {
        let at = rfc3339(*t);
        let ls = sub(&s, "ls", &["--as-of", &at]);
        assert_eq!(ls.code(), 0, "{}", ls.stderr());
        let listed: BTreeMap<String, u64> = ls.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["key"].as_str().unwrap().to_owned(),
                    k["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let want_sizes: BTreeMap<String, u64> = want
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect();
        assert_eq!(listed, want_sizes, "ls --as-of T{i} {at}");

        let dir = s.root.path().join(format!("tree-{i}"));
        let r = sub(
            &s,
            "restore",
            &["--as-of", &at, "--to-dir", dir.to_str().unwrap()],
        );
        assert_eq!(r.code(), 0, "{} {}", r.stderr(), r.stdout());
        assert_eq!(&tree(&dir), want, "restore --to-dir --as-of T{i}");

        let empty = Bucket::new(Kind::Moto, "tm-into");
        let r = restore_run(&s, &empty, &["--as-of", &at]);
        assert_eq!(r.code(), 0, "{} {}", r.stderr(), r.stdout());
        assert_eq!(r.json()["newer_than_as_of"], 0);
        assert_eq!(&bucket_contents(&empty), want, "restore --as-of T{i}");
    }

    // Into the bucket itself, as of T1: what exists now and did not then is left alone and counted.
    let r = restore_run(&s, &b, &["--as-of", &rfc3339(recorded[1].0), "--dry-run"]);
    assert_eq!(r.json()["newer_than_as_of"], 0, "{}", r.stdout());
    let r = restore_run(&s, &b, &["--as-of", &rfc3339(recorded[4].0), "--dry-run"]);
    assert_eq!(r.json()["identical"], 2, "c and d: {}", r.stdout());

    // A no-op versioned run makes no GET of any object.
    let proxy = Proxy::start(&b.endpoint);
    let h = history(&s);
    let r = backup_via(
        &proxy.endpoint,
        &b,
        &s,
        &["--versions", "--history-dir", h.to_str().unwrap()],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let lines = proxy.take();
    let gets: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("GET ") && !l.contains("versions") && !l.contains("versioning"))
        .collect();
    assert!(gets.is_empty(), "{gets:?}");
    assert_eq!(r.json()["versions_downloaded"], 0);
}

/// Two versions of one key that stop being current in the same second get two files; a version and a
/// delete marker of one second are ordered (the marker, latest, wins).
#[test]
fn versions_of_one_second_get_a_file_each_and_the_marker_orders_them() {
    let b = Bucket::new(Kind::Moto, "tm-second");
    enable_versioning(&b);
    let s = Scratch::new();
    // Put, overwrite and delete within one second (retried if a second boundary fell in between).
    let key = in_one_second(&b, "same-second", &[b"first", b"second"], true);
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let held = held_versions(&s, &[&key]);
    let mut bodies: Vec<_> = held.values().map(|(d, _)| d.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
    let files: std::collections::BTreeSet<_> = held.values().map(|(_, p)| p.clone()).collect();
    assert_eq!(files.len(), 2, "two files: {held:?}");
    // After that second the key is gone: the marker is the newest entry.
    next_second();
    let ls = sub(&s, "ls", &["--as-of", &rfc3339(SystemTime::now())]);
    assert!(
        !ls.stdout().contains(&key),
        "deleted at the end of its second: {}",
        ls.stdout()
    );
    // Deleted and put again in one second: the put is the newest, so the key exists.
    let again = format!("{key}.again");
    b.put(&again, b"old");
    next_second();
    delete(&b, &again);
    b.put(&again, b"back");
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    next_second();
    let dir = s.root.path().join("now");
    let r = sub(
        &s,
        "restore",
        &[
            "--as-of",
            &rfc3339(SystemTime::now()),
            "--to-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(std::fs::read(dir.join(&again)).unwrap(), b"back");
}

/// kill -9 at spread instants of a versioned run: the next run converges, and every version the bucket
/// holds is held.
#[test]
fn a_killed_versioned_run_converges_with_no_version_missing() {
    let b = Bucket::new(Kind::Moto, "tm-kill");
    enable_versioning(&b);
    let keys: Vec<String> = (0..12).map(|i| format!("k/{i}.bin")).collect();
    for round in 0..3u64 {
        for (i, k) in keys.iter().enumerate() {
            b.put(k, &bytes(round * 100 + i as u64, 20_000 + i));
        }
    }
    delete(&b, &keys[0]);
    let s = Scratch::new();
    let h = history(&s);
    for delay_ms in [30u64, 120, 300, 700] {
        let mut cmd = command(&s);
        cmd.args([
            "--bucket",
            &b.name,
            "--endpoint-url",
            &b.endpoint,
            "--versions",
            "--history-dir",
            h.to_str().unwrap(),
        ])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let bucket = all_versions(&b);
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let held = held_versions(&s, &names);
    for ((k, id), bytes) in &bucket {
        let (got, _) = held
            .get(&(k.clone(), id.clone()))
            .unwrap_or_else(|| panic!("version {id} of {k} missing after the kills"));
        assert_eq!(got, bytes);
    }
    // No temp file is left anywhere once a run has finished.
    for root in [&s.dest, &h] {
        for e in walkdir::WalkDir::new(root) {
            let e = e.unwrap();
            assert!(
                !e.file_name().to_string_lossy().starts_with(".s3backup.tmp"),
                "{}",
                e.path().display()
            );
        }
    }
}

/// Hostile keys (the restore test's set) round-trip through `--to-dir --as-of` and `restore --as-of`.
/// One change: moto ignores `encoding-type=url` in ListObjectVersions, so a key with a control character
/// that XML 1.0 cannot carry (`\u{1}`) makes its whole listing unreadable there (S3 encodes it); the tab
/// stays.
#[test]
fn hostile_keys_round_trip_through_the_time_machine() {
    let b = Bucket::new(Kind::Moto, "tm-hostile");
    enable_versioning(&b);
    let first = hostile_objects(false);
    for (k, v) in &first {
        b.put(k, v);
    }
    let s = Scratch::new();
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    next_second();
    let t = SystemTime::now();
    next_second();
    for (i, (k, _)) in first.iter().enumerate() {
        if !k.ends_with('/') {
            b.put(k, &bytes(1000 + i as u64, 7));
        }
    }
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let dir = s.root.path().join("then");
    let r = sub(
        &s,
        "restore",
        &["--as-of", &rfc3339(t), "--to-dir", dir.to_str().unwrap()],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let on_disk = tree(&dir);
    for (k, v) in first.iter().filter(|(k, _)| !k.ends_with('/')) {
        assert_eq!(on_disk.get(k), Some(v), "{k:?}");
    }
    assert!(dir.join("folder").is_dir());
    let empty = Bucket::new(Kind::Moto, "tm-hostile-into");
    let r = restore_run(&s, &empty, &["--as-of", &rfc3339(t)]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(bucket_contents(&empty), first);
}

/// Bad input: `--versions` without history, an unversioned bucket, a denied ListBucketVersions, an
/// instant before the backup or in the future, a `--to-dir` that is not empty.
#[test]
fn the_time_machine_refuses_what_it_cannot_do_in_one_line() {
    let b = Bucket::new(Kind::Moto, "tm-bad");
    b.put("x.jpg", b"x");
    let s = Scratch::new();
    let r = backup(&b, &s, &["--versions"]);
    assert_eq!(r.code(), 2);
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        e.contains("--versions") && e.contains("--history-dir"),
        "{e}"
    );
    // Versioning never enabled: said, and the run is an unversioned one.
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["versioning"], "Disabled");
    assert!(r.stderr().contains("never enabled"), "{}", r.stderr());
    assert_eq!(std::fs::read(s.dest.join("x.jpg")).unwrap(), b"x");
    // Denied ListBucketVersions: one line naming the permission, exit 2.
    enable_versioning(&b);
    let proxy = Proxy::start(&b.endpoint);
    proxy.arm(Fault::Forbidden, 1, "?versions");
    let h = history(&s);
    let r = backup_via(
        &proxy.endpoint,
        &b,
        &s,
        &["--versions", "--history-dir", h.to_str().unwrap()],
    );
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        e.contains("s3:ListBucketVersions") && !e.contains('\n'),
        "{e}"
    );
    // Denied GetBucketVersioning: the line says what was being read, and the permission.
    proxy.arm(Fault::Forbidden, 1, "?versioning");
    let r = backup_via(
        &proxy.endpoint,
        &b,
        &s,
        &["--versions", "--history-dir", h.to_str().unwrap()],
    );
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        e.contains("reading the versioning of bucket")
            && e.contains("s3:GetBucketVersioning")
            && !e.contains('\n'),
        "{e}"
    );
    // Instants the backup cannot know.
    for (t, want) in [
        ("2001-01-01", "before the oldest"),
        ("2999-01-01T00:00:00Z", "in the future"),
        ("yesterday", "RFC 3339"),
    ] {
        let r = sub(&s, "ls", &["--as-of", t]);
        assert_eq!(r.code(), 2, "{t}");
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(e.contains(want) && e.contains("--as-of"), "{t}: {e}");
    }
    // A --to-dir with something in it is refused, and left as it was.
    let dir = s.root.path().join("busy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mine.txt"), b"mine").unwrap();
    let r = sub(
        &s,
        "restore",
        &[
            "--as-of",
            &rfc3339(SystemTime::now()),
            "--to-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code(), 2);
    assert!(r.json()["error"].as_str().unwrap().contains("not empty"));
    assert_eq!(tree(&dir).len(), 1);
    // A date means its end: today is fine.
    let today = &rfc3339(SystemTime::now())[..10];
    let r = sub(&s, "ls", &["--as-of", today]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["keys"][0]["key"], "x.jpg");
}

/// Rot at rest in history: `restore --to-dir` checks each file against the catalog and writes no
/// corrupt one.
#[test]
fn rot_in_history_is_caught_by_restore_to_dir() {
    let b = Bucket::new(Kind::Moto, "tm-rot");
    enable_versioning(&b);
    b.put("p.jpg", b"original bytes");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    next_second();
    let t = SystemTime::now();
    next_second();
    b.put("p.jpg", b"replacement!!!");
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    let held = held_versions(&s, &["p.jpg"]);
    let (_, old_path) = held
        .values()
        .find(|(d, _)| d == b"original bytes")
        .expect("the old version is held");
    // Same size, other bytes, mtime kept: only the checksum can tell.
    rot(old_path, b"original BYTES");
    let dir: PathBuf = s.root.path().join("rot");
    let r = sub(
        &s,
        "restore",
        &["--as-of", &rfc3339(t), "--to-dir", dir.to_str().unwrap()],
    );
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(r.json()["corrupt"][0], "p.jpg");
    assert!(!Path::new(&dir.join("p.jpg")).exists());
}

/// Put `bodies` to `key` (and delete it after, with `then_delete`) all within one second, retrying on
/// a fresh key when a second boundary fell in between; returns the key used.
fn in_one_second(b: &Bucket, stem: &str, bodies: &[&[u8]], then_delete: bool) -> String {
    for attempt in 0..6 {
        let key = format!("{stem}-{attempt}");
        next_second();
        for body in bodies {
            b.put(&key, body);
        }
        if then_delete {
            delete(b, &key);
        }
        let out = rt()
            .block_on(
                b.client
                    .list_object_versions()
                    .bucket(&b.name)
                    .prefix(&key)
                    .send(),
            )
            .unwrap();
        let mut secs: Vec<i64> = out
            .versions()
            .iter()
            .map(|v| v.last_modified().unwrap().secs())
            .chain(
                out.delete_markers()
                    .iter()
                    .map(|m| m.last_modified().unwrap().secs()),
            )
            .collect();
        secs.sort_unstable();
        secs.dedup();
        if secs.len() == 1 {
            return key;
        }
    }
    panic!("no second held all the changes");
}

/// Adversarial pass, defect 1: noncurrent versions of a key the disk cannot hold (`../y`) and a folder
/// key with bytes are named as refused (exit 1), not dropped in silence.
#[test]
fn versions_of_refused_keys_are_named() {
    let b = Bucket::new(Kind::Moto, "tm-refused");
    enable_versioning(&b);
    b.put("../y", b"secret1");
    b.put("../y", b"secret2");
    b.put("dir3/", b"content in a folder key");
    b.put("dir3/", b"");
    b.put("ok", b"ok");
    let s = Scratch::new();
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let refused = r.json()["refused"].clone();
    let text = refused.to_string();
    assert!(
        text.contains("../y") && text.contains("noncurrent version"),
        "{text}"
    );
    assert!(text.contains("dir3/"), "{text}");
    assert_eq!(std::fs::read(s.dest.join("ok")).unwrap(), b"ok");
}

/// Defect 2: history adopted from unversioned runs is matched to its VersionId by ETag too, so two
/// versions of one second and size are not taken for each other (and neither is lost).
#[test]
fn adopted_history_of_one_second_keeps_both_versions() {
    let b = Bucket::new(Kind::Moto, "tm-adopt");
    enable_versioning(&b);
    let s = Scratch::new();
    let h = history(&s);
    let hist = ["--history-dir", h.to_str().unwrap()];
    b.put("seed", b"x");
    assert_eq!(backup(&b, &s, &hist).code(), 0);
    let key = in_one_second(&b, "f", &[b"AA", b"BB", b"CC"], false);
    assert_eq!(backup(&b, &s, &hist).code(), 0);
    b.put(&key, b"DDD");
    assert_eq!(backup(&b, &s, &hist).code(), 0, "CC moved to history");
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let bucket = all_versions(&b);
    let held = held_versions(&s, &[&key]);
    for ((k, id), bytes) in bucket.iter().filter(|((k, _), _)| *k == key) {
        let (got, path) = held
            .get(&(k.clone(), id.clone()))
            .unwrap_or_else(|| panic!("version {id} ({bytes:?}) not held: {held:?}"));
        assert_eq!(got, bytes, "{path}");
    }
}

/// Defect 3: `verify` checks the versions in history too; a damaged one is named (exit 1) and the next
/// versioned run fetches it again.
#[test]
fn verify_checks_history_and_the_next_run_heals_it() {
    let b = Bucket::new(Kind::Moto, "tm-verify");
    enable_versioning(&b);
    b.put("p.jpg", b"version one");
    b.put("p.jpg", b"version two");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    let held = held_versions(&s, &["p.jpg"]);
    let (_, old) = held
        .values()
        .find(|(d, _)| d == b"version one")
        .expect("held")
        .clone();
    rot(&old, b"version ONE");
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(r.json()["history_damaged"].as_array().unwrap().len(), 1);
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["versions_downloaded"], 1, "fetched again");
    let held = held_versions(&s, &["p.jpg"]);
    assert!(held.values().any(|(d, _)| d == b"version one"), "{held:?}");
    assert_eq!(sub(&s, "verify", &[]).code(), 0);
}

/// Defect 4: a file `verify` marked damaged is not silently left out of the tree: `ls` shows it
/// damaged and `restore --to-dir` calls it corrupt (exit 1).
#[test]
fn a_damaged_current_file_is_corrupt_not_absent() {
    let b = Bucket::new(Kind::Moto, "tm-damaged");
    enable_versioning(&b);
    b.put("a+b", b"bytes of a+b");
    b.put("other", b"fine");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(s.dest.join("a+b"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"XX").unwrap();
    assert_eq!(sub(&s, "verify", &[]).code(), 1);
    next_second();
    let now = rfc3339(SystemTime::now());
    let ls = sub(&s, "ls", &["--as-of", &now]).json();
    let keys = ls["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{ls}");
    assert_eq!(keys[0]["damaged"], true, "{ls}");
    let dir = s.root.path().join("out");
    let r = sub(
        &s,
        "restore",
        &["--as-of", &now, "--to-dir", dir.to_str().unwrap()],
    );
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert_eq!(r.json()["corrupt"][0], "a+b");
}

/// Defect 6: once `--keep-days` may have pruned versions, an instant before its horizon is refused by
/// name rather than answered with a partial tree.
#[test]
fn an_instant_before_the_keep_days_horizon_is_refused() {
    let b = Bucket::new(Kind::Moto, "tm-horizon");
    enable_versioning(&b);
    b.put("k", b"v");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &["--keep-days", "1"]).code(), 0);
    // A version that was current long ago, as a catalog that kept one would hold it (moto cannot date
    // an object back).
    let dest = s.dest.canonicalize().unwrap();
    let catalog =
        s3backup::catalog::Catalog::open(&s3backup::lock::dest_state_dir(&s.state, &dest)).unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(10 * 86_400);
    catalog
        .record_held(&[s3backup::catalog::Held {
            file: "20200101T000000Z/old".into(),
            key: "old".into(),
            version_id: Some("v-old".into()),
            size: 1,
            last_modified: Some(long_ago),
            until: long_ago + Duration::from_secs(86_400),
            exact: true,
            etag: None,
            crc64nvme: None,
            followed_by: None,
            damaged: false,
        }])
        .unwrap();
    drop(catalog);
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let r = sub(&s, "ls", &["--as-of", &rfc3339(two_days_ago)]);
    assert_eq!(r.code(), 2);
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("--keep-days"), "{e}");
    let r = sub(&s, "ls", &["--as-of", &rfc3339(SystemTime::now())]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
}

/// Defect 7: a local file the bucket never held is kept when an object arrives under its name, but the
/// time machine does not call it a version.
#[test]
fn a_local_file_is_no_version() {
    let b = Bucket::new(Kind::Moto, "tm-local");
    enable_versioning(&b);
    b.put("seed", b"s");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    std::fs::write(s.dest.join("new.txt"), b"local junk").unwrap();
    b.put("new.txt", b"from the bucket");
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    let v = sub(&s, "versions", &["new.txt"]).json();
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "only the bucket's version: {v}");
    assert_eq!(
        std::fs::read(versions[0]["path"].as_str().unwrap()).unwrap(),
        b"from the bucket"
    );
}

/// Defect 8: `versions` puts a key's entries of one second in their order: the delete marker that is
/// the newest entry first, current until now; every interval ends where the next began.
#[test]
fn versions_of_one_second_print_in_order() {
    let b = Bucket::new(Kind::Moto, "tm-order");
    enable_versioning(&b);
    let key = in_one_second(&b, "k", &[b"v0", b"v1", b"v2", b"v3"], true);
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    let v = sub(&s, "versions", &[&key]).json();
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 5, "{v}");
    assert_eq!(versions[0]["delete_marker"], true, "{v}");
    assert!(versions[0]["current_until"].is_null(), "{v}");
    let bodies: Vec<Vec<u8>> = versions[1..]
        .iter()
        .map(|x| std::fs::read(x["path"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec![
            b"v3".to_vec(),
            b"v2".to_vec(),
            b"v1".to_vec(),
            b"v0".to_vec()
        ],
        "{v}"
    );
}

/// Overwrite the bytes of `path` with `bytes` of the same length, keeping its mtime.
fn rot(path: &str, bytes: &[u8]) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Second pass, defects 1 to 4: a rotted version in history is never uploaded by `restore
/// --from-history`; `verify` marks it damaged rather than forgetting it, so `ls --as-of` shows it and
/// `restore --to-dir` calls it corrupt; a history folder that is away is one error with nothing marked;
/// a touched mtime alone is no damage to a file with a checksum.
#[test]
fn damage_in_history_is_named_never_uploaded_nor_forgotten() {
    let b = Bucket::new(Kind::Moto, "tm-hdamage");
    enable_versioning(&b);
    b.put("x", b"one");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    next_second();
    let t = SystemTime::now();
    next_second();
    b.put("x", b"two");
    b.put("keep", b"k");
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    let held = held_versions(&s, &["x"]);
    let (_, old) = held.values().find(|(d, _)| d == b"one").unwrap().clone();
    // A touched mtime alone: verify finds the bytes intact.
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    // The history folder away (unmounted): one error, nothing marked.
    let h = history(&s);
    let away = s.root.path().join("history-away");
    std::fs::rename(&h, &away).unwrap();
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 2, "{}", r.stdout());
    assert!(r.json()["error"].as_str().unwrap().contains("not mounted"));
    std::fs::rename(&away, &h).unwrap();
    assert_eq!(sub(&s, "verify", &[]).code(), 0, "nothing was marked");
    // Rot: named by verify, kept in the catalog as damaged.
    rot(&old, b"0NE");
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.json()["history_damaged"].as_array().unwrap().len(), 1);
    let ls = sub(&s, "ls", &["--as-of", &rfc3339(t)]).json();
    let x = ls["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "x")
        .cloned()
        .unwrap_or_else(|| panic!("x is not left out: {ls}"));
    assert_eq!(x["damaged"], true, "{ls}");
    let dir = s.root.path().join("then");
    let r = sub(
        &s,
        "restore",
        &["--as-of", &rfc3339(t), "--to-dir", dir.to_str().unwrap()],
    );
    assert_eq!(r.code(), 1);
    assert_eq!(r.json()["corrupt"][0], "x");
    // restore --from-history: the run folder's rotted file is corrupt, never uploaded.
    let run = Path::new(&old)
        .strip_prefix(&h)
        .unwrap()
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap()
        .to_owned();
    let into = Bucket::new(Kind::Moto, "tm-hdamage-into");
    let r = restore_run(&s, &into, &["--from-history", &run]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert_eq!(r.json()["corrupt"][0], "x");
    assert!(bucket_contents(&into).is_empty());
    // The next versioned run fetches the version again; then all is well.
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.json()["versions_downloaded"], 1, "{}", r.stdout());
    let r = sub(
        &s,
        "restore",
        &[
            "--as-of",
            &rfc3339(t),
            "--to-dir",
            s.root.path().join("again").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(
        std::fs::read(s.root.path().join("again/x")).unwrap(),
        b"one"
    );
}

/// Second pass, defect 7: a key deleted while `--max-delete` holds its file back in `--dest` is gone
/// from the time machine at its delete marker.
#[test]
fn a_deletion_held_back_by_max_delete_still_ends_the_key() {
    let b = Bucket::new(Kind::Moto, "tm-maxdel");
    enable_versioning(&b);
    b.put("a", b"1");
    b.put("b", b"2");
    let s = Scratch::new();
    assert_eq!(versioned_backup(&b, &s, &[]).code(), 0);
    next_second();
    let before = SystemTime::now();
    next_second();
    delete(&b, "a");
    delete(&b, "b");
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.json()["max_delete_blocked"], 2);
    next_second();
    let ls = sub(&s, "ls", &["--as-of", &rfc3339(SystemTime::now())]).json();
    assert_eq!(ls["keys"].as_array().unwrap().len(), 0, "{ls}");
    let ls = sub(&s, "ls", &["--as-of", &rfc3339(before)]).json();
    assert_eq!(ls["keys"].as_array().unwrap().len(), 2, "{ls}");
    let v = sub(&s, "versions", &["a"]).json();
    assert!(
        v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["delete_marker"] == true || !x["current_until"].is_null()),
        "the file is no longer current: {v}"
    );
}

/// Second pass, defect 8: a key and a key under it as a folder (`a`, `a/b`) whose versions stopped
/// being current in one second take folders of their own.
#[test]
fn a_key_and_a_folder_of_it_in_one_second_both_kept() {
    let b = Bucket::new(Kind::Moto, "tm-prefix");
    enable_versioning(&b);
    let s = Scratch::new();
    for attempt in 0..6 {
        let (k, kb) = (format!("p{attempt}"), format!("p{attempt}/b"));
        next_second();
        b.put(&k, b"1");
        b.put(&kb, b"x");
        b.put(&k, b"22");
        b.put(&kb, b"yy");
        let v = all_versions(&b);
        let secs: std::collections::BTreeSet<_> = rt()
            .block_on(
                b.client
                    .list_object_versions()
                    .bucket(&b.name)
                    .prefix(&k)
                    .send(),
            )
            .unwrap()
            .versions()
            .iter()
            .map(|x| x.last_modified().unwrap().secs())
            .collect();
        assert!(v.len() >= 4);
        if secs.len() == 1 {
            break;
        }
    }
    // The current `p/b` cannot sit under the file `p` (refused, exit 1, as ever); both keys' older
    // versions are kept all the same.
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.json()["failed"], serde_json::json!([]), "{}", r.stdout());
    assert_eq!(r.json()["versions_downloaded"], 2, "{}", r.stdout());
    let r = versioned_backup(&b, &s, &[]);
    assert_eq!(r.json()["versions_downloaded"], 0, "nothing left to fetch");
}
