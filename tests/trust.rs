//! The backup's memory off the happy path (issue 22): history, verify, restore, pruning, signals and
//! status, each case a hostile user found, against the real binary and real S3 servers on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;

fn history_dir(s: &Scratch) -> PathBuf {
    s.root.path().join("history")
}

fn hist(s: &Scratch) -> Vec<String> {
    vec![
        "--history-dir".into(),
        history_dir(s).to_str().unwrap().to_owned(),
    ]
}

fn with<'a>(a: &'a [String], b: &[&'a str]) -> Vec<&'a str> {
    a.iter()
        .map(String::as_str)
        .chain(b.iter().copied())
        .collect()
}

fn restore_into(s: &Scratch, into: &Bucket, extra: &[&str]) -> Run {
    let mut args = vec!["--bucket", &into.name, "--endpoint-url", &into.endpoint];
    args.extend_from_slice(extra);
    sub(s, "restore", &args)
}

fn delete(b: &Bucket, key: &str) {
    rt().block_on(b.client.delete_object().bucket(&b.name).key(key).send())
        .unwrap();
}

fn keys_of(b: &Bucket) -> Vec<String> {
    let out = rt()
        .block_on(b.client.list_objects_v2().bucket(&b.name).send())
        .unwrap();
    out.contents()
        .iter()
        .map(|o| o.key().unwrap().to_owned())
        .collect()
}

/// Flip one byte of `path` and put its mtime back: rot that size and mtime cannot see.
fn rot(path: &Path) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut data = fs::read(path).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0x40;
    fs::write(path, &data).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn history_files(s: &Scratch) -> BTreeMap<String, Vec<u8>> {
    tree(&history_dir(s))
}

fn u(j: &serde_json::Value, field: &str) -> u64 {
    j[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {j}"))
}

/// Issue 22, 1: Folder markers are no files for `--max-delete`: every file under markers gone is a mass deletion,
/// empty markers alone are none; `--max-delete-bytes` guards bytes the same way.
#[test]
fn max_delete_counts_files_and_bytes_never_folder_markers() {
    let b = Bucket::new(Kind::Seaweed, "maxdel-markers");
    for y in 2021..2025 {
        b.put(&format!("photos/{y}/"), b"");
        b.put(&format!("photos/{y}/img.jpg"), &bytes(y, 2000));
    }
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    for y in 2021..2025 {
        delete(&b, &format!("photos/{y}/img.jpg"));
    }
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(
        r.json()["max_delete_blocked"],
        4,
        "4 of 4 files, not 4 of 8 rows"
    );
    assert_eq!(tree(&s.dest).len(), 4, "nothing moved");

    // Only empty markers gone: never blocked, and counted as no deletion.
    let b = Bucket::new(Kind::Seaweed, "maxdel-empty");
    for i in 0..4 {
        b.put(&format!("m{i}/"), b"");
    }
    b.put("keep.jpg", &bytes(1, 100));
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    for i in 0..4 {
        delete(&b, &format!("m{i}/"));
    }
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        u(&r.json(), "deleted_to_history"),
        0,
        "markers keep nothing"
    );
    assert!(!s.dest.join("m0").exists(), "the emptied marker folders go");

    // Bytes: 1 file of 10 is within 50%, but its 60 KB are over --max-delete-bytes 50K.
    let b = Bucket::new(Kind::Seaweed, "maxdel-bytes");
    for i in 0..9 {
        b.put(&format!("small/{i}"), &bytes(i, 100));
    }
    b.put("big.bin", &bytes(99, 60_000));
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    delete(&b, "big.bin");
    let r = backup(&b, &s, &with(&h, &["--max-delete-bytes", "50K"]));
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(r.json()["max_delete_blocked"], 1);
    assert!(r.stderr().contains("--max-delete-bytes"), "{}", r.stderr());
    let r = backup(&b, &s, &with(&h, &["--max-delete-bytes", "1M"]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(u(&r.json(), "deleted_to_history"), 1);
    let r = backup(&b, &s, &["--max-delete-bytes", "lots"]);
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("--max-delete-bytes \"lots\""),
        "{}",
        r.stderr()
    );
}

/// Issue 22, 2: Restore uploads only bytes it can vouch for: rot, a row marked damaged, a planted symlink (as the
/// file or as a folder on its way) and a fifo are not uploaded; everything else is.
#[test]
fn restore_uploads_only_bytes_it_can_vouch_for() {
    let b = Bucket::new(Kind::Seaweed, "vouch-src");
    for k in [
        "good.jpg",
        "rotten.jpg",
        "link.jpg",
        "sub/x.jpg",
        "fifo.jpg",
    ] {
        b.put(k, &bytes(k.len() as u64, 3000));
    }
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    rot(&s.dest.join("rotten.jpg"));
    let outside = s.root.path().join("secret");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("secret.txt"), b"not the backup's").unwrap();
    fs::write(outside.join("sub/x.jpg"), b"not the backup's").unwrap();
    fs::remove_file(s.dest.join("link.jpg")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), s.dest.join("link.jpg")).unwrap();
    fs::remove_dir_all(s.dest.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), s.dest.join("sub")).unwrap();
    fs::remove_file(s.dest.join("fifo.jpg")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(s.dest.join("fifo.jpg"))
            .status()
            .unwrap()
            .success()
    );

    let into = Bucket::new(Kind::Seaweed, "vouch-dst");
    let r = restore_into(&s, &into, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["uploaded"], 1, "{j}");
    assert_eq!(j["corrupt"], serde_json::json!(["rotten.jpg"]));
    assert_eq!(
        keys(&j["refused"]),
        ["fifo.jpg", "link.jpg", "sub/x.jpg"],
        "{j}"
    );
    assert_eq!(keys_of(&into), ["good.jpg"]);

    // verify marks the rotten row damaged; restore still refuses it, and after the next backup repairs
    // it, everything goes up.
    assert_eq!(sub(&s, "verify", &[]).code(), 1);
    let r = restore_into(&s, &into, &["--dry-run"]);
    assert_eq!(r.json()["corrupt"], serde_json::json!(["rotten.jpg"]));
    for k in ["link.jpg", "fifo.jpg"] {
        fs::remove_file(s.dest.join(k)).unwrap();
    }
    fs::remove_file(s.dest.join("sub")).unwrap();
    let r = backup(&b, &s, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let r = restore_into(&s, &into, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(keys_of(&into).len(), 5);
}

/// The lines of s3backup's own stderr (the hermetic test environment's AWS_CONFIG_FILE warnings aside).
fn said(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| !l.contains("config file overridden via environment variable not found"))
        .count()
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

/// Issue 22, 3 and 4: History holds only bytes the bucket held; damage marks clear when a verify finds the files
/// intact; a re-fetch of identical bytes keeps nothing.
#[test]
fn history_keeps_versions_not_rot_and_damage_marks_clear() {
    let b = Bucket::new(Kind::Seaweed, "hist-rot");
    let v1: BTreeMap<String, Vec<u8>> = ["rotten", "edited", "plain"]
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("{k}.jpg"), bytes(i as u64 + 40, 4000)))
        .collect();
    b.put_many(&v1);
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    rot(&s.dest.join("rotten.jpg"));
    fs::write(s.dest.join("edited.jpg"), b"a hand edit").unwrap();
    for k in v1.keys() {
        b.put(k, &bytes(7, 4100));
    }
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        (u(&j, "replaced_to_history"), u(&j, "repaired")),
        (1, 2),
        "{j}"
    );
    // Only the plain file's old bytes are a version (in the run folder, where restore takes them);
    // the rotten and the edited copies are set aside beside it, never lost.
    let all = history_files(&s);
    let versions: Vec<&String> = all
        .keys()
        .filter(|k| !k.contains(".changed-locally/"))
        .collect();
    assert_eq!(versions.len(), 1, "{all:?}");
    assert!(versions[0].ends_with("/plain.jpg"), "{versions:?}");
    assert_eq!(all[versions[0]], v1["plain.jpg"]);
    let aside: BTreeMap<&str, &Vec<u8>> = all
        .iter()
        .filter_map(|(k, v)| Some((k.split_once(".changed-locally/")?.1, v)))
        .collect();
    assert_eq!(aside.len(), 2, "{all:?}");
    assert_eq!(aside["edited.jpg"].as_slice(), b"a hand edit");
    assert_ne!(aside["rotten.jpg"], &v1["rotten.jpg"]);
    let run = versions[0].split('/').next().unwrap();
    let into = Bucket::new(Kind::Seaweed, "hist-rot-dst");
    let r = restore_into(&s, &into, &["--from-history", run]);
    assert_eq!(
        (r.code(), u(&r.json(), "uploaded")),
        (0, 1),
        "{}",
        r.stdout()
    );
    let r = restore_into(
        &s,
        &into,
        &["--from-history", &format!("{run}.changed-locally")],
    );
    assert_eq!(r.code(), 2, "no run folder: {}", r.stderr());

    // The volume "unmounted" during a verify: every row marked. Back, a verify clears them, and the
    // backup downloads nothing.
    let aside = s.root.path().join("unmounted");
    fs::rename(&s.dest, &aside).unwrap();
    fs::create_dir_all(&s.dest).unwrap();
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 1);
    assert_eq!(r.json()["missing"].as_array().unwrap().len(), 3);
    fs::remove_dir(&s.dest).unwrap();
    fs::rename(&aside, &s.dest).unwrap();
    assert_eq!(sub(&s, "verify", &[]).code(), 0);
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(u(&r.json(), "downloaded"), 0, "{}", r.stdout());

    // Marked again and no verify in between: the re-fetch brings identical bytes, history gets nothing.
    fs::rename(&s.dest, &aside).unwrap();
    fs::create_dir_all(&s.dest).unwrap();
    assert_eq!(sub(&s, "verify", &[]).code(), 1);
    fs::remove_dir(&s.dest).unwrap();
    fs::rename(&aside, &s.dest).unwrap();
    let before = history_files(&s);
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(u(&j, "downloaded"), 3);
    assert_eq!(
        (u(&j, "replaced_to_history"), u(&j, "repaired")),
        (0, 0),
        "{j}"
    );
    assert_eq!(history_files(&s), before);
    assert_eq!(sub(&s, "verify", &[]).code(), 0);
}

/// Issue 22, 5: An object that replaces a deleted prefix (or a deleted folder marker) is backed up in the same
/// run: the folders the deletion emptied are removed first.
#[test]
fn an_object_replacing_a_deleted_prefix_is_backed_up() {
    let b = Bucket::new(Kind::Seaweed, "prefix-swap");
    b.put("report/a.txt", b"a");
    b.put("report/b.txt", b"b");
    b.put("x/", b"");
    b.put("keep/", b"");
    b.put("keep/old.txt", b"old");
    for i in 0..6 {
        b.put(&format!("other/{i}.txt"), b"o");
    }
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    delete(&b, "report/a.txt");
    delete(&b, "report/b.txt");
    delete(&b, "x/");
    delete(&b, "keep/old.txt");
    b.put("report", b"now a file");
    b.put("x", b"also a file");
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(fs::read(s.dest.join("report")).unwrap(), b"now a file");
    assert_eq!(fs::read(s.dest.join("x")).unwrap(), b"also a file");
    assert!(
        s.dest.join("keep").is_dir(),
        "a folder whose marker stays, stays"
    );
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!((r.code(), u(&r.json(), "downloaded")), (0, 0));
}

/// Issue 22, 7: A deleted object's file that cannot be moved to history is a failure that names the history
/// path, and stays in --dest. (The history folder is nested so deep that the run folder's path is over
/// PATH_MAX, while the destination's is not: a failure as real as a full disk, for root too.)
#[test]
fn a_failed_move_to_history_fails_the_run_and_names_the_history_path() {
    let b = Bucket::new(Kind::Seaweed, "move-fails");
    b.put("deep/a-much-longer-name-of-the-photo.jpg", &bytes(3, 1000));
    b.put("stays.jpg", &bytes(4, 1000));
    b.put("stays2.jpg", &bytes(5, 1000));
    let s = Scratch::new();
    let mut h = s.root.path().join("h");
    // 4050 bytes: the probe file (+27) fits under PATH_MAX (4096), the moved file (+58) does not.
    while h.as_os_str().len() < 4050 {
        h.push("d".repeat(200.min(4050 - h.as_os_str().len()).max(1)));
    }
    // Made one level at a time (each mkdir relative to the last), as a path this long cannot be
    // handed to one call.
    let top = s.root.path().join("h");
    fs::create_dir_all(&top).unwrap();
    let mut made = top.clone();
    for comp in h.strip_prefix(&top).unwrap().components() {
        made.push(comp);
        fs::create_dir(&made).unwrap();
    }
    let flag = ["--history-dir", h.to_str().unwrap()];
    let r = backup(&b, &s, &flag);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    delete(&b, "deep/a-much-longer-name-of-the-photo.jpg");
    let r = backup(&b, &s, &flag);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        j["failed"][0]["key"],
        "deep/a-much-longer-name-of-the-photo.jpg"
    );
    let e = j["failed"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("to history") && e.contains(&h.to_str().unwrap()[..60]),
        "{e}"
    );
    assert!(
        s.dest
            .join("deep/a-much-longer-name-of-the-photo.jpg")
            .exists()
    );
    let st = sub(&s, "status", &[]);
    assert_eq!(st.json()["last_run"]["exit_code"], 1, "{}", st.stdout());
}

/// Issue 22, 8 and 11: Pruning takes only folders named exactly as a run; a folder that only starts like one, or
/// a non-ASCII name, is left alone and panics nothing (backup and `restore --from-history`).
#[test]
fn pruning_takes_only_run_folders_and_odd_names_panic_nothing() {
    let b = Bucket::new(Kind::Seaweed, "prune-exact");
    b.put("a.jpg", b"a");
    let s = Scratch::new();
    let h = history_dir(&s);
    fs::create_dir_all(h.join("20200101T000000Z-before-migration")).unwrap();
    fs::write(
        h.join("20200101T000000Z-before-migration/keep.txt"),
        b"mine",
    )
    .unwrap();
    fs::create_dir_all(h.join("202é101T000000Z")).unwrap();
    fs::create_dir_all(h.join("20200101T000000Z/x")).unwrap();
    fs::create_dir_all(h.join("20200101T000000Z-2")).unwrap();
    let r = backup(&b, &s, &with(&hist(&s), &["--keep-days", "30"]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(u(&r.json(), "history_pruned_runs"), 2);
    assert!(
        h.join("20200101T000000Z-before-migration/keep.txt")
            .exists()
    );
    assert!(h.join("202é101T000000Z").exists());
    let into = Bucket::new(Kind::Seaweed, "prune-exact-dst");
    // A run folder that is a link is no run folder; a link inside a real one is refused, not followed.
    let secret = s.root.path().join("secret");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("pw"), b"not history").unwrap();
    std::os::unix::fs::symlink(&secret, h.join("20261201T000000Z")).unwrap();
    fs::create_dir_all(h.join("20261202T000000Z")).unwrap();
    std::os::unix::fs::symlink(secret.join("pw"), h.join("20261202T000000Z/pw")).unwrap();
    let r = restore_into(&s, &into, &["--from-history", "20261202T000000Z"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(keys(&r.json()["refused"]), ["pw"]);
    for odd in [
        "20261201T000000Z",
        "202é101T000000Z",
        "20200101T000000Z-before-migration",
        "../x",
    ] {
        let r = restore_into(&s, &into, &["--from-history", odd]);
        assert_eq!(r.code(), 2, "{odd}: {}", r.stderr());
        assert!(r.stderr().contains("--from-history"), "{}", r.stderr());
    }
}

/// Issue 22, 9 and 17: --state-dir inside --dest is refused; a refused --history-dir is not created; a dangling
/// symlink as --history-dir is named as one; --json names a missing required flag.
#[test]
fn bad_state_and_history_folders_are_refused_by_name() {
    let b = Bucket::new(Kind::Seaweed, "bad-dirs");
    b.put("a.jpg", b"a");
    let s = Scratch::new();
    fs::create_dir_all(&s.dest).unwrap();
    let inside = s.dest.join("state");
    let mut cmd = command(&s);
    cmd.args(["--bucket", &b.name, "--endpoint-url", &b.endpoint, "--json"])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&inside);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--state-dir") && e.contains("inside"), "{e}");
    assert!(!inside.exists());

    let in_dest = s.dest.join("h");
    let r = backup(&b, &s, &["--history-dir", in_dest.to_str().unwrap()]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(!in_dest.exists(), "a refused history folder is not created");
    let link = s.root.path().join("hlink");
    std::os::unix::fs::symlink(s.root.path().join("nowhere"), &link).unwrap();
    let r = backup(&b, &s, &["--history-dir", link.to_str().unwrap()]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("does not exist"), "{}", r.stderr());

    let out = command(&s)
        .args(["--json", "--dest", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["error"].as_str().unwrap().contains("--bucket"), "{j}");
}

/// Issue 22, 12: verify goes on past a folder replaced by a file, and a catalog truncated to nothing is an error.
#[test]
fn verify_goes_on_past_a_file_in_the_way_and_refuses_an_empty_catalog() {
    let b = Bucket::new(Kind::Seaweed, "verify-notdir");
    b.put("sub/a.jpg", b"a");
    b.put("sub/b.jpg", b"b");
    b.put("z.jpg", b"z");
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    fs::remove_dir_all(s.dest.join("sub")).unwrap();
    fs::write(s.dest.join("sub"), b"in the way").unwrap();
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["missing"], serde_json::json!(["sub/a.jpg", "sub/b.jpg"]));
    assert_eq!((u(&j, "checked"), u(&j, "ok")), (3, 1));

    let cat = walkdir::WalkDir::new(&s.state)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "catalog.sqlite")
        .unwrap()
        .into_path();
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", cat.display()));
    }
    fs::write(&cat, b"").unwrap();
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 2, "{}", r.stdout());
    assert!(r.stderr().contains("catalog.sqlite"), "{}", r.stderr());
    // Restore says the same, once, rather than a failed entry with no key.
    let into = Bucket::new(Kind::Seaweed, "verify-notdir-dst");
    fs::write(&cat, bytes(9, 8192)).unwrap();
    let r = restore_into(&s, &into, &["--dry-run"]);
    assert_eq!(r.code(), 2, "{}", r.stdout());
    assert!(r.stderr().contains("catalog.sqlite"), "{}", r.stderr());
}

/// A file adopted without a checksum (the catalog lost) that rotted before its first verify: the
/// ETag, a plain MD5, tells it; the next backup fetches it again.
#[test]
fn verify_checks_an_adopted_file_against_its_md5_etag() {
    let b = Bucket::new(Kind::Seaweed, "verify-md5");
    b.put_md5_only("c.jpg", &bytes(3, 5000));
    b.put_md5_only("d.jpg", &bytes(4, 5000));
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    let cat = walkdir::WalkDir::new(&s.state)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "catalog.sqlite")
        .unwrap()
        .into_path();
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", cat.display()));
    }
    rot(&s.dest.join("c.jpg"));
    assert_eq!(u(&backup(&b, &s, &[]).json(), "unchanged"), 2, "adopted");
    let r = sub(&s, "verify", &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(r.json()["corrupt"], serde_json::json!(["c.jpg"]));
    assert_eq!(u(&backup(&b, &s, &[]).json(), "downloaded"), 1);
    assert_eq!(sub(&s, "verify", &[]).code(), 0);
}

/// A reader of stdout or stderr that is gone, or a full disk under them, does not turn a finished
/// backup into a crash: the exit code is the run's, and the run record is written.
#[test]
fn a_closed_or_full_stdout_is_no_crash() {
    let b = Bucket::new(Kind::Seaweed, "devfull");
    b.put("a.jpg", b"a");
    let s = Scratch::new();
    let full = || fs::File::options().write(true).open("/dev/full").unwrap();
    let mut cmd = command(&s);
    cmd.args(["--bucket", &b.name, "--endpoint-url", &b.endpoint, "--json"])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state)
        .stdout(full())
        .stderr(full());
    assert_eq!(cmd.status().unwrap().code(), Some(0));
    let st = sub(&s, "status", &[]);
    assert_eq!(st.code(), 0, "{}", st.stdout());
    assert_eq!(st.json()["last_run"]["exit_code"], 0);
    let mut cmd = command(&s);
    cmd.args(["verify", "--json", "--dest"])
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state)
        .stdout(full());
    assert_eq!(cmd.status().unwrap().code(), Some(0));
}

/// Issue 22, 13: Restore: a missing bucket or wrong keys are one line and exit 2 before any key (a dry run too);
/// restoring into the very bucket backed up finds multipart objects identical.
#[test]
fn restore_bucket_errors_are_one_line_and_the_source_bucket_is_identical() {
    let b = Bucket::new(Kind::Seaweed, "restore-same");
    let parts = vec![bytes(1, 5 * 1024 * 1024), bytes(2, 1024)];
    b.put_multipart("big.bin", &parts, None);
    for i in 0..5 {
        b.put(&format!("f{i}.jpg"), &bytes(i, 100));
    }
    let s = Scratch::new();
    assert_eq!(backup(&b, &s, &[]).code(), 0);
    let missing = Bucket::missing(Kind::Seaweed, "restore-nobucket");
    for dry in [&[][..], &["--dry-run"][..]] {
        let r = restore_into(&s, &missing, dry);
        assert_eq!(r.code(), 2, "{}", r.stderr());
        assert_eq!(said(&r.stderr()), 1, "{}", r.stderr());
        assert!(r.stderr().contains("NoSuchBucket"), "{}", r.stderr());
    }
    let mut cmd = command(&s);
    cmd.env("AWS_SECRET_ACCESS_KEY", "wrong")
        .args([
            "restore",
            "--bucket",
            &b.name,
            "--endpoint-url",
            &b.endpoint,
        ])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(said(&String::from_utf8_lossy(&out.stderr)), 1);

    let r = restore_into(&s, &b, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(
        (u(&r.json(), "identical"), u(&r.json(), "uploaded")),
        (6, 0)
    );
}

/// Issue 22, 14: SIGTERM and SIGINT stop a run gracefully: exit 143/130, the run record says so, no temp file is
/// left, and the next run converges. A CloudWatch endpoint that never answers costs seconds, not 30.
#[test]
fn a_signal_stops_the_run_with_a_record_and_the_next_run_converges() {
    let b = Bucket::new(Kind::Seaweed, "signals");
    let objs: BTreeMap<String, Vec<u8>> = (0..12)
        .map(|i| (format!("p/{i:02}.jpg"), bytes(i, 200_000)))
        .collect();
    b.put_many(&objs);
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let s = Scratch::new();
        let proxy = Proxy::start(&b.endpoint);
        // The fifth object's GET hangs for a while: the run is mid-flight when the signal comes.
        proxy.hook_once(
            "p/05.jpg",
            Arc::new(|| std::thread::sleep(Duration::from_secs(4))),
        );
        let mut cmd = command(&s);
        cmd.args([
            "--bucket",
            &b.name,
            "--endpoint-url",
            &proxy.endpoint,
            "--json",
        ])
        .args(["--concurrency", "2"])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !proxy.peek().iter().any(|l| l.contains("p/05.jpg")) {
            assert!(Instant::now() < deadline, "the hung GET never came");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let took = sent.elapsed();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            took < Duration::from_secs(4),
            "stopped after {took:?}, not at once"
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["exit_code"], code);
        assert!(j["interrupted"].as_str().unwrap().starts_with("SIG"), "{j}");
        let st = sub(&s, "status", &[]);
        assert_eq!(st.json()["last_run"]["exit_code"], code, "{}", st.stdout());
        let temps: Vec<_> = walkdir::WalkDir::new(&s.dest)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".s3backup.tmp.")
            })
            .collect();
        // A temp file of the abandoned download may outlive the process only in the blocking write
        // it was in; the next run sweeps it (the run left its in-progress marker).
        let r = backup(&b, &s, &[]);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert_eq!(tree(&s.dest), objs);
        assert!(
            u(&r.json(), "stale_temp_files_removed") as usize >= temps.len(),
            "{temps:?}"
        );
    }

    // Metrics to an endpoint that accepts the connection and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(4) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let s = Scratch::new();
    let mut cmd = command(&s);
    cmd.env(
        "AWS_ENDPOINT_URL_CLOUDWATCH",
        format!("http://127.0.0.1:{port}"),
    )
    .args(["--bucket", &b.name, "--endpoint-url", &b.endpoint])
    .args(["--cloudwatch-namespace", "S3Backup/Test"])
    .arg("--dest")
    .arg(&s.dest)
    .arg("--state-dir")
    .arg(&s.state);
    let t = Instant::now();
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not publish"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(hold);
}

/// Issue 22, 15 and 16: status keeps its verdict past a damaged last-run.json; a dry run says what the real run
/// would block, and its JSON has no `downloaded`.
#[test]
fn status_survives_a_damaged_record_and_a_dry_run_tells_the_block() {
    let b = Bucket::new(Kind::Seaweed, "status-dry");
    for i in 0..6 {
        b.put(&format!("{i}.jpg"), &bytes(i, 100));
    }
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    let record = walkdir::WalkDir::new(&s.state)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "last-run.json")
        .unwrap()
        .into_path();
    fs::write(&record, b"{garbage").unwrap();
    let st = sub(&s, "status", &[]);
    assert_eq!(st.code(), 0, "{}", st.stderr());
    assert!(
        st.json()["problems"][0]
            .as_str()
            .unwrap()
            .contains("last-run.json")
    );

    for i in 0..4 {
        delete(&b, &format!("{i}.jpg"));
    }
    let r = backup(&b, &s, &with(&h, &["--dry-run"]));
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["max_delete_blocked"], 4);
    assert!(j.get("downloaded").is_none(), "{j}");
    assert_eq!(j["would_download"], 0);
    b.put("5.jpg", b"changed");
    fs::create_dir_all(history_dir(&s).join("20200101T000000Z")).unwrap();
    let r = backup(&b, &s, &with(&h, &["--dry-run", "--max-delete", "100"]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(j["would_delete_to_history"], 4);
    assert_eq!(j["would_replace_to_history"], 1);
    assert_eq!(j["would_prune_runs"], 1);
    assert!(history_dir(&s).join("20200101T000000Z").exists());
    assert_eq!(tree(&s.dest).len(), 6, "a dry run moves nothing");
}

/// Issue 22, 6: History on a bind mount of the disk that holds --dest: the same device number, yet rename(2)
/// fails with EXDEV. Refused at start, naming both.
#[test]
fn history_on_a_bind_mount_is_refused_at_start() {
    let b = Bucket::new(Kind::Seaweed, "bindmount");
    b.put("a.jpg", b"a");
    let s = Scratch::new();
    fs::create_dir_all(&s.dest).unwrap();
    let real = s.root.path().join("real-history");
    let bound = s.root.path().join("bound-history");
    fs::create_dir_all(&real).unwrap();
    fs::create_dir_all(&bound).unwrap();
    let script = r#"set -e
mount --bind "$REAL" "$BOUND"
set +e
"$BIN" --bucket "$BUCKET" --endpoint-url "$EP" --dest "$DEST" --state-dir "$STATE" --history-dir "$BOUND"
echo "exit=$?" >&2
"$BIN" --bucket "$BUCKET" --endpoint-url "$EP" --dest "$DEST" --state-dir "$STATE" --history-dir "$BOUND/x/y"
echo "exit=$?" >&2
"#;
    let Some(r) = in_mount_namespace(
        "history_on_a_bind_mount_is_refused_at_start",
        &s,
        &b,
        script,
        &[("REAL", &real), ("BOUND", &bound)],
    ) else {
        return;
    };
    let err = r.stderr();
    assert!(err.contains("exit=2"), "{err}");
    assert!(
        err.contains("--history-dir") && err.contains("--dest") && err.contains("same mount"),
        "{err}"
    );
    assert!(
        !s.dest.join("a.jpg").exists(),
        "nothing backed up into a run that cannot keep history"
    );
    assert_eq!(err.matches("exit=2").count(), 2, "{err}");
    assert!(
        !real.join("x").exists(),
        "a refused history folder is not created"
    );
}

/// Issue 22 (the adversarial pass): the last copy of a deleted object is never thrown away. A file whose
/// mtime was only touched is still its version; a hand-edited one is set aside; neither is lost.
#[test]
fn a_deleted_objects_last_copy_is_never_thrown_away() {
    let b = Bucket::new(Kind::Seaweed, "last-copy");
    for k in ["touched", "edited", "rotten", "a", "b", "c", "d", "e"] {
        b.put(k, &bytes(k.len() as u64, 3000));
    }
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    let original = tree(&s.dest);
    fs::File::options()
        .write(true)
        .open(s.dest.join("touched"))
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(978_307_200))
        .unwrap();
    let mut notes = original["edited"].clone();
    notes.extend_from_slice(b"my notes");
    fs::write(s.dest.join("edited"), &notes).unwrap();
    rot(&s.dest.join("rotten"));
    let rotten = fs::read(s.dest.join("rotten")).unwrap();
    for k in ["touched", "edited", "rotten"] {
        delete(&b, k);
    }
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let j = r.json();
    assert_eq!(
        (
            u(&j, "deleted_to_history"),
            u(&j, "deleted_changed_locally")
        ),
        (1, 2),
        "{j}"
    );
    let all = history_files(&s);
    let find = |name: &str| {
        all.iter()
            .find(|(k, _)| k.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name} lost: {all:?}"))
    };
    let (k, v) = find("touched");
    assert!(!k.contains(".changed-locally"), "{k}");
    assert_eq!(v, &original["touched"]);
    let (k, v) = find("edited");
    assert!(k.contains(".changed-locally/"), "{k}");
    assert_eq!(v, &notes);
    assert_eq!(find("rotten").1, &rotten);
}

/// Issue 22 (the second adversarial pass): deletions never reach through a link planted in `--dest`,
/// and a deleted object whose path now holds a folder, or lies under a file, is no failure.
#[test]
fn deletions_never_follow_links_and_odd_leftovers_are_no_failure() {
    let b = Bucket::new(Kind::Seaweed, "del-links");
    for k in [
        "p/a", "p/sub/b", "q/c", "r/d", "keep1", "keep2", "keep3", "keep4", "keep5",
    ] {
        b.put(k, k.as_bytes());
    }
    let s = Scratch::new();
    let h = hist(&s);
    assert_eq!(backup(&b, &s, &with(&h, &[])).code(), 0);
    // p becomes a link to the user's own folder of the same shape; q/c becomes a folder; r a file.
    let mine = s.root.path().join("mine");
    fs::create_dir_all(mine.join("sub")).unwrap();
    fs::write(mine.join("a"), b"p/a").unwrap();
    fs::write(mine.join("sub/b"), b"p/sub/b").unwrap();
    fs::remove_dir_all(s.dest.join("p")).unwrap();
    std::os::unix::fs::symlink(&mine, s.dest.join("p")).unwrap();
    fs::remove_file(s.dest.join("q/c")).unwrap();
    fs::create_dir_all(s.dest.join("q/c/user")).unwrap();
    fs::remove_dir_all(s.dest.join("r")).unwrap();
    fs::write(s.dest.join("r"), b"a file in the way").unwrap();
    for k in ["p/a", "p/sub/b", "q/c", "r/d"] {
        delete(&b, k);
    }
    let r = backup(&b, &s, &with(&h, &["--max-delete", "100"]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(fs::read(mine.join("a")).unwrap(), b"p/a");
    assert_eq!(fs::read(mine.join("sub/b")).unwrap(), b"p/sub/b");
    assert!(
        s.dest.join("q/c/user").is_dir(),
        "a user's folder is left alone"
    );
    assert_eq!(fs::read(s.dest.join("r")).unwrap(), b"a file in the way");
    let r = backup(&b, &s, &with(&h, &[]));
    assert_eq!(r.code(), 0, "converged: {}", r.stderr());
    // verify does not read through the link either.
    let v = sub(&s, "verify", &[]);
    assert_eq!(v.code(), 0, "{}", v.stdout());
}

/// Issue 22 (the second adversarial pass): `cron-entry` whose output cannot be written fails, so a
/// bootstrap never installs an empty cron file.
#[test]
fn cron_entry_that_cannot_write_fails() {
    let s = Scratch::new();
    let full = fs::File::options().write(true).open("/dev/full").unwrap();
    let out = command(&s)
        .args([
            "cron-entry",
            "--user",
            "backup",
            "--bucket",
            "images",
            "--dest",
            "/srv/b",
        ])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writing the cron file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
