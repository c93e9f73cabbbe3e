//! The appliance scenario, locally: the cron.d file rendered by `s3backup cron-entry`, its command run
//! the way cron runs it, and the assertions of `tests/e2e/scenario.sh`, the same script the NixOS VM test
//! (nix/vm-test.nix) runs against the same cron job.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

#[test]
fn cron_job_backs_up_the_bucket_exactly_as_the_vm_test_checks() {
    let b = Bucket::new(Kind::Seaweed, "e2e");
    let objs: BTreeMap<String, Vec<u8>> = (0..30)
        .map(|i| {
            (
                format!("photos/2024/{:02}/img_{i:03}.jpg", i % 4 + 1),
                bytes(7000 + i, 2000 + i as usize),
            )
        })
        .chain([(
            "albums/summer trip/beach & sun.jpg".to_string(),
            bytes(1, 999),
        )])
        .collect();
    b.put_many(&objs);

    let s = Scratch::new();
    let expected = s.root.path().join("expected");
    for (k, v) in &objs {
        let p = expected.join(k);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }
    // The job's credentials come from the backup user's ~/.aws files, as on a real machine.
    fs::create_dir_all(s.home.join(".aws")).unwrap();
    fs::write(
        s.home.join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();

    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let cron_file = s.root.path().join("s3backup.cron");
    let render = Command::new(env!("CARGO_BIN_EXE_s3backup"))
        .args([
            "cron-entry",
            "--schedule",
            "*/5 * * * *",
            "--user",
            user.trim(),
        ])
        .args([
            "--bucket",
            &b.name,
            "--region",
            "us-east-1",
            "--endpoint-url",
            &b.endpoint,
        ])
        .arg("--dest")
        .arg(&s.dest)
        .args(["--binary", env!("CARGO_BIN_EXE_s3backup")])
        .output()
        .unwrap();
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    fs::write(&cron_file, &render.stdout).unwrap();
    fs::set_permissions(&cron_file, fs::Permissions::from_mode(0o644)).unwrap();

    // At run time when the runner says (nextest remaps it when the suite runs from an archive, as
    // tests/run does for an unprivileged user), else where it was built.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let out = Command::new("sh")
        .arg(format!("{manifest_dir}/tests/e2e/scenario.sh"))
        .arg("all")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &s.home)
        .env("S3BACKUP_CRON_FILE", &cron_file)
        .env("DEST", &s.dest)
        .env("EXPECTED_DIR", &expected)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree_line = format!("holds exactly the {} files", objs.len());
    for step in [
        "scenario: ok: cron file",
        "scenario: ok: ran the cron job's command",
        &tree_line,
        "scenario: ok: a second run left every file",
    ] {
        assert!(stdout.contains(step), "no {step:?} in: {stdout}");
    }
    // Independently of the script: the tree really is the bucket.
    assert_eq!(tree(&s.dest), objs);
}
