//! Issue 16: the run's metrics reach CloudWatch (moto's, on 127.0.0.1) after every kind of run, a dead
//! CloudWatch endpoint changes nothing of the backup, and `s3backup status` tells healthy from stale.

mod common;

use std::fs;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use common::*;

/// A namespace of this test process alone.
fn namespace(label: &str) -> String {
    format!("S3BackupTest/{label}-{}", std::process::id())
}

fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    use aws_sdk_cloudwatch::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_sdk_cloudwatch::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(endpoint(Kind::Moto))
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    aws_sdk_cloudwatch::Client::from_conf(conf)
}

/// The one value of `metric` for `bucket` in the last hour (Maximum over one period), if any.
fn metric(ns: &str, bucket: &str, metric: &str) -> Option<f64> {
    let now = SystemTime::now();
    let out = rt()
        .block_on(
            cloudwatch()
                .get_metric_statistics()
                .namespace(ns)
                .metric_name(metric)
                .dimensions(Dimension::builder().name("Bucket").value(bucket).build())
                .start_time((now - Duration::from_secs(3600)).into())
                .end_time((now + Duration::from_secs(60)).into())
                .period(7200)
                .statistics(Statistic::Maximum)
                .send(),
        )
        .expect("GetMetricStatistics");
    let points = out.datapoints();
    assert!(points.len() <= 1, "{points:?}");
    points.first().and_then(|p| p.maximum())
}

/// A backup of `bucket` through `endpoint` with metrics to `ns`, CloudWatch at `cw_endpoint`.
fn backup_with_metrics(
    endpoint: &str,
    b: &Bucket,
    s: &Scratch,
    ns: &str,
    cw_endpoint: &str,
    extra_env: &[(&str, &str)],
) -> Run {
    let mut cmd = command(s);
    cmd.env("AWS_ENDPOINT_URL_CLOUDWATCH", cw_endpoint);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.args(["--bucket", &b.name, "--endpoint-url", endpoint, "--json"]);
    cmd.args(["--cloudwatch-namespace", ns]);
    cmd.arg("--dest")
        .arg(&s.dest)
        .arg("--state-dir")
        .arg(&s.state);
    Run {
        output: cmd.output().expect("run s3backup"),
    }
}

#[test]
fn every_run_publishes_its_metrics_and_a_dead_endpoint_changes_nothing() {
    let ns = namespace("runs");
    let moto = endpoint(Kind::Moto);

    // A good run: BackupSucceeded 1 and the counts.
    let good = Bucket::new(Kind::Seaweed, "metrics-good");
    good.put("a.jpg", &bytes(1, 3000));
    good.put("b.jpg", &bytes(2, 4000));
    let s = Scratch::new();
    let r = backup_with_metrics(&good.endpoint, &good, &s, &ns, &moto, &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(metric(&ns, &good.name, "BackupSucceeded"), Some(1.0));
    assert_eq!(metric(&ns, &good.name, "ObjectsDownloaded"), Some(2.0));
    assert_eq!(metric(&ns, &good.name, "BytesDownloaded"), Some(7000.0));
    assert_eq!(metric(&ns, &good.name, "ObjectsFailed"), Some(0.0));
    assert!(metric(&ns, &good.name, "DurationSeconds").is_some());

    // A corrupted object (exit 1).
    let bad = Bucket::new(Kind::Seaweed, "metrics-corrupt");
    bad.put("a.jpg", &bytes(3, 3000));
    let proxy = Proxy::start(&bad.endpoint);
    proxy.arm(Fault::FlipByte, 1000, "a.jpg");
    let s = Scratch::new();
    let r = backup_with_metrics(&proxy.endpoint, &bad, &s, &ns, &moto, &[]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert_eq!(metric(&ns, &bad.name, "BackupSucceeded"), Some(0.0));
    assert_eq!(metric(&ns, &bad.name, "ObjectsFailed"), Some(1.0));

    // Access denied on the listing (exit 2).
    let denied = Bucket::new(Kind::Seaweed, "metrics-denied");
    let s = Scratch::new();
    let r = backup_with_metrics(
        &denied.endpoint,
        &denied,
        &s,
        &ns,
        &moto,
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret")],
    );
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert_eq!(metric(&ns, &denied.name, "BackupSucceeded"), Some(0.0));

    // Locked out (exit 75): the lock is held here.
    let locked = Bucket::new(Kind::Seaweed, "metrics-locked");
    let s = Scratch::new();
    fs::create_dir_all(&s.dest).unwrap();
    let dir = s3backup::lock::dest_state_dir(&s.state, &s.dest.canonicalize().unwrap());
    fs::create_dir_all(&dir).unwrap();
    let lock = fs::File::create(dir.join("lock")).unwrap();
    lock.try_lock().unwrap();
    let r = backup_with_metrics(&locked.endpoint, &locked, &s, &ns, &moto, &[]);
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert_eq!(metric(&ns, &locked.name, "BackupSucceeded"), Some(0.0));
    drop(lock);

    // CloudWatch unreachable: the same backup, the same exit, and one line that says so.
    let s = Scratch::new();
    let r = backup_with_metrics(&good.endpoint, &good, &s, &ns, "http://127.0.0.1:9", &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(tree(&s.dest).len(), 2);
    let warning = r
        .stderr()
        .lines()
        .find(|l| l.contains("could not publish the run's metrics"))
        .unwrap_or_else(|| panic!("no warning: {}", r.stderr()))
        .to_owned();
    assert!(
        warning.contains("cannot connect to http://127.0.0.1:9"),
        "{warning}"
    );
    assert!(warning.len() < 400, "{warning}");
}

fn status(s: &Scratch, extra: &[&str]) -> Run {
    let mut cmd = command(s);
    cmd.arg("status").arg("--dest").arg(&s.dest);
    cmd.arg("--state-dir").arg(&s.state);
    cmd.args(extra);
    Run {
        output: cmd.output().expect("run s3backup status"),
    }
}

#[test]
fn status_names_the_last_success_and_ages_it() {
    let b = Bucket::new(Kind::Seaweed, "status");
    b.put("a.jpg", b"a");
    let s = Scratch::new();

    let r = status(&s, &["--json"]);
    assert_eq!(r.code(), 1, "never ran: {}", r.stderr());
    assert_eq!(r.json()["healthy"], false);
    assert_eq!(r.json()["last_run"], serde_json::Value::Null);

    assert_eq!(backup(&b, &s, &[]).code(), 0);
    let r = status(&s, &["--json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    let j = r.json();
    assert_eq!(j["healthy"], true);
    assert_eq!(j["last_run"]["exit_code"], 0);
    assert_eq!(j["last_run"]["downloaded"], 1);
    assert!(j["age_hours"].as_f64().unwrap() < 0.1, "{j}");
    let success_at = j["last_success_at"].as_str().unwrap().to_owned();

    // A later failure (the bucket is gone): the last run says so, the last success stays.
    let gone = Bucket::missing(Kind::Seaweed, "status-gone");
    let r = backup(&gone, &s, &[]);
    assert_eq!(r.code(), 2);
    let r = status(&s, &["--json"]);
    assert_eq!(r.code(), 0, "still within 26 hours: {}", r.stdout());
    let j = r.json();
    assert_eq!(j["last_run"]["exit_code"], 2);
    assert!(
        j["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains(&gone.name)
    );
    assert_eq!(j["last_success_at"], success_at.as_str());
    let human = status(&s, &[]);
    assert!(human.stdout().contains("exit 2"), "{}", human.stdout());
    assert!(human.stdout().contains(&success_at), "{}", human.stdout());

    // The same success, 30 hours old: not healthy at 26 hours, healthy at 48.
    let rec = walkdir::WalkDir::new(&s.state)
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "last-success.json")
        .unwrap()
        .into_path();
    let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&rec).unwrap()).unwrap();
    let old = SystemTime::now() - Duration::from_secs(30 * 3600);
    doc["finished_at"] = s3backup::status::timestamp(old).into();
    fs::write(&rec, doc.to_string()).unwrap();
    let r = status(&s, &["--json"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    let age = r.json()["age_hours"].as_f64().unwrap();
    assert!((29.9..30.1).contains(&age), "{age}");
    assert_eq!(status(&s, &["--max-age", "48"]).code(), 0);
    let r = status(&s, &["--max-age", "0"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("--max-age"), "{}", r.stderr());
}
