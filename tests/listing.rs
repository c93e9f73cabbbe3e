//! Issue 26, parallel listing: the real binary through a latency proxy in front of real S3 servers.
//! A parallel listing must give the same backup as a sequential one (same files, same refusals in the
//! same order), be complete (deletions are found), run its streams at once, and break like a sequential
//! one when any stream fails.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::latency::{LatencyProxy, ListFault};
use common::*;

fn delete(b: &Bucket, key: &str) {
    rt().block_on(b.client.delete_object().bucket(&b.name).key(key).send())
        .unwrap_or_else(|e| panic!("delete {key}: {e}"));
}

/// A nested tree and a flat run of keys, with file/prefix conflicts at several depths, a folder marker
/// under a file of the same name, names where byte order and a "`/` first" order disagree
/// (`data-2024/x` sorts before `data/x`), and keys no file can hold exactly.
fn mixed() -> BTreeMap<String, Vec<u8>> {
    let mut keys: Vec<String> = Vec::new();
    for y in 2020..2025 {
        for m in 1..=6 {
            for i in 0..(4 + (y - 2020) * 3 + m) {
                keys.push(format!("photos/{y}/{m:02}/img_{i:03}.jpg"));
            }
        }
    }
    for i in 0..120 {
        keys.push(format!("flat_{i:03}.csv"));
    }
    keys.extend(
        [
            // a file, then keys under it as a prefix: the file wins, the rest are refused
            "a",
            "a/b",
            "a/c/d",
            "photos/2022/03",
            "docs/readme",
            "docs/readme/x",
            "docs/z",
            // a folder marker under a file of the same path
            "m",
            "m/",
            // byte order: data-2024/ < data/ < data0
            "data/x",
            "data-2024/x",
            "data0",
            // refused by the key → path mapping
            "../up",
            "e//f",
            "g/./h",
            // refused at the top level, sorting between the refused `../up` and `a/b`
            ".s3backup.tmp.zz",
        ]
        .map(str::to_owned),
    );
    keys.into_iter()
        .enumerate()
        .map(|(i, k)| {
            let body = if k.ends_with('/') {
                Vec::new()
            } else {
                bytes(i as u64, 50 + i % 200)
            };
            (k, body)
        })
        .collect()
}

#[test]
fn parallel_listing_backs_up_exactly_what_a_sequential_one_does() {
    // moto: lists in S3's byte order and stores `../up`, `e//f` as S3 does.
    let b = Bucket::new(Kind::Moto, "parlist");
    let objs = mixed();
    assert!(objs.len() > 400);
    b.put_many(&objs);
    let proxy = LatencyProxy::start(
        &b.endpoint,
        Duration::from_millis(30),
        Duration::from_millis(2),
    );

    let seq = Scratch::new();
    let r1 = backup_via(&proxy.endpoint, &b, &seq, &["--list-concurrency", "1"]);
    assert_eq!(r1.code(), 1, "refusals make it exit 1: {}", r1.stderr());
    let (lists, max) = proxy.take_lists();
    assert_eq!(max, 1, "a sequential listing: {lists:#?}");

    let par = Scratch::new();
    let h = par.root.path().join("history");
    let hist = [
        "--list-concurrency",
        "8",
        "--history-dir",
        h.to_str().unwrap(),
    ];
    let r2 = backup_via(&proxy.endpoint, &b, &par, &hist);
    assert_eq!(r2.code(), 1, "{}", r2.stderr());
    let (lists, max) = proxy.take_lists();
    assert!(max > 1, "the streams ran one at a time: {lists:#?}");
    assert!(
        lists.iter().any(|l| l.contains("delimiter=%2F")),
        "no prefix discovery: {lists:#?}"
    );

    let (j1, j2) = (r1.json(), r2.json());
    let (tp, ts) = (tree(&par.dest), tree(&seq.dest));
    assert_eq!(tp.keys().collect::<Vec<_>>(), ts.keys().collect::<Vec<_>>());
    assert!(tp == ts, "same files, other contents");
    // The same refusals, in the same (byte) order, for the same reasons.
    assert_eq!(j2["refused"], j1["refused"]);
    for k in [
        "a/b",
        "a/c/d",
        "docs/readme/x",
        "m/",
        "photos/2022/03/img_000.jpg",
    ] {
        assert!(
            r2.refused_keys().iter().any(|r| r == k),
            "{k} not refused: {:?}",
            r2.refused_keys()
        );
    }
    for k in [
        "a",
        "docs/readme",
        "photos/2022/03",
        "data/x",
        "data-2024/x",
        "data0",
    ] {
        assert_eq!(tree(&par.dest)[k], objs[k], "{k}");
    }
    for f in ["listed", "downloaded", "unchanged", "folders"] {
        assert_eq!(j2[f], j1[f], "{f}");
    }
    assert_eq!(j2["listed"].as_u64(), Some(objs.len() as u64));
    assert_eq!(j2["error"], serde_json::Value::Null);

    // Complete: a deleted object is found and its file moved to history; a re-run changes nothing.
    delete(&b, "photos/2023/05/img_007.jpg");
    delete(&b, "flat_119.csv");
    let r3 = backup_via(&proxy.endpoint, &b, &par, &hist);
    let j3 = r3.json();
    assert_eq!(j3["deleted_to_history"], 2, "{}", r3.stderr());
    assert_eq!(j3["downloaded"], 0);
    assert!(!par.dest.join("flat_119.csv").exists());
    assert_eq!(tree(&h).len(), 2);
}

#[test]
fn a_stream_failing_half_way_is_an_incomplete_listing_and_moves_nothing() {
    // SeaweedFS (fast to seed); these names sort the same in its order and in S3's.
    let b = Bucket::new(Kind::Seaweed, "parfail");
    let mut objs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for p in ["a", "c", "z"] {
        for i in 0..20 {
            objs.insert(format!("{p}/{i:02}"), bytes(i, 40));
        }
    }
    // More than a page, so its stream fails on its second page.
    for i in 0..1100 {
        objs.insert(format!("big/{i:04}"), bytes(i, 20));
    }
    b.put_many(&objs);
    let proxy = LatencyProxy::start(&b.endpoint, Duration::from_millis(5), Duration::ZERO);
    let s = Scratch::new();
    let h = s.root.path().join("history");
    let hist = [
        "--list-concurrency",
        "4",
        "--history-dir",
        h.to_str().unwrap(),
    ];
    let r = backup_via(&proxy.endpoint, &b, &s, &hist);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["listed"], objs.len());

    // One object gone before the broken page, one after it, one in a stream that succeeds.
    for k in ["big/0001", "big/1099", "z/05"] {
        delete(&b, k);
    }
    proxy.fail_lists_containing(&["prefix=big%2F", "continuation-token="]);
    let r = backup_via(&proxy.endpoint, &b, &s, &hist);
    assert!(proxy.failed() > 0, "the fault never fired");
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let j = r.json();
    let error = j["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("listing bucket")
            && error.contains("under big/")
            && error.contains("403 AccessDenied"),
        "{error}"
    );
    assert_eq!(j["deleted_to_history"], 0);
    assert!(tree(&h).is_empty(), "nothing moved: {:?}", tree(&h).keys());
    for k in ["big/0001", "big/1099", "z/05"] {
        assert!(s.dest.join(k).exists(), "{k} left the destination");
    }

    // The same run with the fault gone finds all three deletions.
    let proxy = LatencyProxy::start(&b.endpoint, Duration::from_millis(5), Duration::ZERO);
    let r = backup_via(&proxy.endpoint, &b, &s, &hist);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["deleted_to_history"], 3);
}

#[test]
fn a_truncated_page_without_a_token_breaks_the_listing_at_every_concurrency() {
    // A page that says "more" but gives no token to ask for it: the SDK's paginator ends there quietly,
    // and a listing that stops early looks complete, so the keys after it looked deleted.
    let objs: BTreeMap<String, Vec<u8>> = (0..2500)
        .map(|i| (format!("f_{i:04}"), bytes(i, 16)))
        .collect();
    for lists in ["1", "16"] {
        let b = Bucket::new(Kind::Seaweed, &format!("notoken{lists}"));
        b.put_many(&objs);
        let proxy = LatencyProxy::start(&b.endpoint, Duration::ZERO, Duration::ZERO);
        let s = Scratch::new();
        let h = s.root.path().join("history");
        let args = [
            "--list-concurrency",
            lists,
            "--history-dir",
            h.to_str().unwrap(),
        ];
        let r = backup_via(&proxy.endpoint, &b, &s, &args);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert_eq!(r.json()["listed"], objs.len());

        // Gone from the bucket, on the page after the broken one.
        delete(&b, "f_2400");
        // The second page is truncated and loses its token; the third (with f_2400) is never asked.
        proxy.damage_lists_containing(&["continuation-token="], ListFault::DropToken);
        let r = backup_via(&proxy.endpoint, &b, &s, &args);
        assert!(proxy.failed() > 0, "the fault never fired");
        assert_eq!(r.code(), 1, "--list-concurrency {lists}: {}", r.stderr());
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains("a truncated page without a continuation token"),
            "--list-concurrency {lists}: {error}"
        );
        assert_eq!(
            r.json()["deleted_to_history"],
            0,
            "--list-concurrency {lists}"
        );
        assert!(tree(&h).is_empty(), "nothing moved: {:?}", tree(&h).keys());
        assert!(s.dest.join("f_2400").exists(), "--list-concurrency {lists}");

        let proxy = LatencyProxy::start(&b.endpoint, Duration::ZERO, Duration::ZERO);
        let r = backup_via(&proxy.endpoint, &b, &s, &args);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        assert_eq!(
            r.json()["deleted_to_history"],
            1,
            "--list-concurrency {lists}"
        );
    }
}

#[test]
fn an_emptied_prefix_the_server_still_names_is_empty_not_a_broken_listing() {
    // SeaweedFS keeps an emptied folder: its delimited listing still names `p05/`, whose own listing
    // has no key. With 11 prefixes at the root and 2 streams, `p05/` is a stream of its own.
    let b = Bucket::new(Kind::Seaweed, "emptied");
    let mut objs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for p in 0..10 {
        for i in 0..3 {
            objs.insert(format!("p{p:02}/{i}"), bytes(i, 30));
        }
    }
    for i in 0..1100 {
        objs.insert(format!("pad/{i:04}"), bytes(i, 10));
    }
    b.put_many(&objs);
    let s = Scratch::new();
    let h = s.root.path().join("history");
    let args = [
        "--list-concurrency",
        "2",
        "--history-dir",
        h.to_str().unwrap(),
    ];
    let r = backup(&b, &s, &args);
    assert_eq!(r.code(), 0, "{}", r.stderr());

    for i in 0..3 {
        delete(&b, &format!("p05/{i}"));
    }
    b.put("p09/new", b"new");
    let named = rt()
        .block_on(
            b.client
                .list_objects_v2()
                .bucket(&b.name)
                .delimiter("/")
                .send(),
        )
        .unwrap();
    assert!(
        named
            .common_prefixes()
            .iter()
            .any(|p| p.prefix() == Some("p05/")),
        "the server no longer names the emptied prefix: this test shows nothing"
    );
    let r = backup(&b, &s, &args);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["deleted_to_history"], 3);
    assert_eq!(std::fs::read(s.dest.join("p09/new")).unwrap(), b"new");
    // The sequential listing agrees.
    let r = backup(
        &b,
        &s,
        &[
            "--list-concurrency",
            "1",
            "--history-dir",
            h.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["deleted_to_history"], 0);
}

#[test]
fn list_concurrency_is_validated_and_read_from_the_environment() {
    let b = Bucket::new(Kind::Seaweed, "parflag");
    b.put("k", b"v");
    let s = Scratch::new();
    let r = backup(&b, &s, &["--list-concurrency", "0"]);
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr().contains("--list-concurrency 0"),
        "{}",
        r.stderr()
    );

    let proxy = LatencyProxy::start(&b.endpoint, Duration::ZERO, Duration::ZERO);
    let mut cmd = command(&s);
    cmd.env("S3BACKUP_LIST_CONCURRENCY", "1")
        .args([
            "--bucket",
            &b.name,
            "--endpoint-url",
            &proxy.endpoint,
            "--json",
        ])
        .arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let (lists, _) = proxy.take_lists();
    assert!(
        lists.iter().all(|l| !l.contains("delimiter=")),
        "S3BACKUP_LIST_CONCURRENCY=1 is the sequential listing: {lists:#?}"
    );
    let r = backup_via(&proxy.endpoint, &b, &s, &[]);
    assert_eq!(r.code(), 0);
    let (lists, _) = proxy.take_lists();
    assert!(
        lists.iter().any(|l| l.contains("delimiter=")),
        "the default is parallel: {lists:#?}"
    );
}
