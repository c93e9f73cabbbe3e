#!/opt/awscli/bin/python3
"""tests/vm image only (never part of the appliance): the guest's side of the VM test.

  seed    (vmtest-seed.service, before cloud-init's final stage) mounts the scenario's data disk
          (label vmdata), waits for the S3 server on 127.0.0.1 and creates the buckets: the images bucket
          with seed/ and the artifact bucket with the binary under its key. The server keeps its data on
          a disk of its own (label s3data), which a second boot from a fresh root disk gets again: then
          the buckets exist, and only between/ (objects added between the boots) and the new artifact
          are put.
  finish  (vmtest-finish.service) waits for /var/lib/cloud/instance/boot-finished (cloud-init's final
          stage is over; `cloud-init status --wait` can return earlier), records the versions under test
          (from dpkg: starting Python programs such as `cloud-init --version` costs seconds under TCG);
          when the bootstrap installed the cron job, puts the late/ objects into the bucket and waits until
          a run of the job (started by cron: nothing here runs it) has backed them up and no run is left;
          stops cron, writes the bucket's listing and the journal lines of cron and of the job, and powers
          the VM off. The host then reads the disk: the assertions are all there, none here.

Everything it records goes to /var/lib/vmtest/. Endpoint and credentials: /root/.aws (like the bootstrap).
"""

import json
import os
import subprocess
import sys
import time

import boto3

OUT = "/var/lib/vmtest"
DATA = "/run/vmdata"
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"


def log(msg):
    print(f"vmtest: {time.strftime('%H:%M:%S')} {msg}", flush=True)


def s3():
    return boto3.client("s3")


def scenario():
    with open(os.path.join(DATA, "scenario.json"), encoding="utf-8") as f:
        return json.load(f)


def files_under(root):
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            yield os.path.relpath(p, root), p


def seed():
    os.makedirs(DATA, exist_ok=True)
    if not os.path.ismount(DATA):
        subprocess.run(["mount", "-o", "ro", "LABEL=vmdata", DATA], check=True)
    sc = scenario()
    c = s3()
    deadline = time.time() + 600
    while True:
        try:
            c.list_buckets()
            break
        except Exception as e:  # noqa: BLE001 (any failure: not up yet)
            if time.time() > deadline:
                raise SystemExit(f"vmtest: the S3 server did not come up: {e}")
            time.sleep(2)
    log("S3 server is up")
    existing = {b["Name"] for b in c.list_buckets().get("Buckets", [])}
    for b in (sc["images_bucket"], sc["artifact_bucket"]):
        if b not in existing:
            c.create_bucket(Bucket=b)
    n = 0
    for part in ("seed", "between"):
        for key, path in files_under(os.path.join(DATA, part)):
            c.upload_file(path, sc["images_bucket"], key)
            n += 1
    c.upload_file(os.path.join(DATA, "artifact"), sc["artifact_bucket"], sc["artifact_key"])
    log(f"seeded s3://{sc['images_bucket']} with {n} objects and s3://{sc['artifact_bucket']}/{sc['artifact_key']}"
        f" (buckets that existed: {sorted(existing)})")
    with open(os.path.join(OUT, "seeded"), "w", encoding="utf-8") as f:
        f.write(f"{n}\n")


def running_jobs():
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/comm", encoding="utf-8") as f:
                    if f.read().strip() == "s3backup":
                        pids.append(int(p))
            except OSError:
                pass
    return pids


def wait_for(what, cond, timeout):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            log(f"TIMEOUT after {timeout}s waiting for {what}")
            return False
        time.sleep(2)
    return True


def sh(cmd):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def finish():
    os.makedirs(OUT, exist_ok=True)
    status = {"started": time.time()}
    status["boot_finished"] = wait_for(BOOT_FINISHED, lambda: os.path.exists(BOOT_FINISHED), 1200)
    status["boot_finished_at"] = time.time()
    log("cloud-init's final stage is over" if status["boot_finished"] else "cloud-init did not finish")
    versions = {
        "kernel": os.uname().release,
        "cloud-init": sh("dpkg-query -W -f='${Version}' cloud-init"),
        "cron": sh("dpkg-query -W -f='${Version}' cron"),
        "systemd": sh("dpkg-query -W -f='${Version}' systemd"),
        "debian": sh("cat /etc/debian_version"),
    }
    with open(os.path.join(OUT, "versions"), "w", encoding="utf-8") as f:
        f.writelines(f"{k}: {v}\n" for k, v in versions.items())
    sc = scenario()
    if os.path.exists("/etc/cron.d/s3backup"):
        c = s3()
        late = list(files_under(os.path.join(DATA, "late")))
        status["late_upload_started_at"] = time.time()
        for key, path in late:
            c.upload_file(path, sc["images_bucket"], key)
        status["late_uploaded_at"] = time.time()
        log(f"put {len(late)} late object(s) into s3://{sc['images_bucket']}; waiting for cron to run the job")
        dest = sc["backup_dir"]
        status["late_backed_up"] = wait_for(
            "a cron run backing up the late objects",
            lambda: all(os.path.isfile(os.path.join(dest, k)) for k, _ in late), 300)
        status["late_backed_up_at"] = time.time()
        wait_for("the job's run to end", lambda: not running_jobs(), 300)
        sh("systemctl stop cron.service")
        status["no_run_left"] = wait_for("every run of the job to end", lambda: not running_jobs(), 300)
        log("the job has run from cron; cron stopped")
    else:
        log("no /etc/cron.d/s3backup: nothing for cron to run")
    try:
        c = s3()
        listing = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=sc["images_bucket"]):
            for o in page.get("Contents", []):
                listing.append({"key": o["Key"], "size": o["Size"], "etag": o["ETag"]})
        with open(os.path.join(OUT, "bucket.json"), "w", encoding="utf-8") as f:
            json.dump(listing, f, indent=1)
    except Exception as e:  # noqa: BLE001
        log(f"could not list the bucket: {e}")
    sh(f"journalctl --no-pager -o json -t s3backup -t CRON > {OUT}/journal.json")
    sh(f"journalctl --no-pager -b > {OUT}/journal.txt")
    status["finished"] = time.time()
    with open(os.path.join(OUT, "finish.json"), "w", encoding="utf-8") as f:
        json.dump(status, f, indent=1)
    log("powering off")
    os.sync()
    subprocess.run(["systemctl", "poweroff"], check=False)


if __name__ == "__main__":
    {"seed": seed, "finish": finish}[sys.argv[1]]()
