#!/usr/bin/env python3
"""tests/vm/vmcheck.py: the VM test's assertions, made from the host on the powered-off guest's root disk
(a raw ext4 image, read with debugfs: nothing is mounted, nothing in the guest judges itself).

  vmcheck.py good   IMAGE WORK   the bootstrap installed everything and cron ran the job
  vmcheck.py badsha IMAGE WORK   a wrong ArtifactSha256: nothing installed, failure signalled

WORK is the scenario's folder from tests/vm/run: it holds scenario.json (what was seeded and the stack's
parameters), expected/ (the bucket's content as files: seed plus the objects added after the bootstrap)
and receives dump/ (what is copied out of the image). Prints "ok - ..." / "not ok - ..." lines (the
caller counts them) and "# ..." notes; exits 1 when a check failed.
"""

import hashlib
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CFNHELP = os.path.join(REPO, "cfn", "tests", "cfnhelp.py")
SCENARIO_SH = os.path.join(REPO, "tests", "e2e", "scenario.sh")

failed = 0


def ok(name, cond, detail=""):
    global failed
    if cond:
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"not ok - {name}")
        for line in str(detail).splitlines()[-40:]:
            print(f"    | {line}")
    return cond


def note(msg):
    for line in str(msg).splitlines():
        print(f"# {line}")


class Disk:
    """Read-only access to an ext4 image through debugfs."""

    def __init__(self, image, dump_dir):
        self.image = image
        self.dump_dir = dump_dir
        os.makedirs(dump_dir, exist_ok=True)

    def _run(self, cmd):
        r = subprocess.run(["debugfs", "-R", cmd, self.image], capture_output=True, text=True,
                           errors="surrogateescape")
        return r.stdout, r.stderr

    def stat(self, path):
        """{'type', 'mode', 'uid', 'gid', 'size'} of path (not following a final symlink), or None."""
        out, _ = self._run(f'stat "{path}"')
        m = re.search(r"Type:\s+(\S+)\s+Mode:\s+(\d+)", out)
        u = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
        s = re.search(r"Size:\s+(\d+)", out)
        if not (m and u):
            return None
        return {"type": m.group(1), "mode": int(m.group(2), 8), "uid": int(u.group(1)),
                "gid": int(u.group(2)), "size": int(s.group(1)) if s else None}

    def exists(self, path):
        return self.stat(path) is not None

    def dump(self, path):
        """Copy a file out (owner, mode and times preserved); the local path, or None."""
        if not self.exists(path):
            return None
        local = os.path.join(self.dump_dir, path.lstrip("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        self._run(f'dump -p "{path}" "{local}"')
        return local if os.path.exists(local) else None

    def rdump(self, path):
        """Copy a directory tree out; the local path, or None."""
        if not self.exists(path):
            return None
        parent = os.path.join(self.dump_dir, os.path.dirname(path).lstrip("/"))
        os.makedirs(parent, exist_ok=True)
        self._run(f'rdump "{path}" "{parent}"')
        local = os.path.join(parent, os.path.basename(path))
        return local if os.path.isdir(local) else None

    def read(self, path):
        local = self.dump(path)
        if local is None:
            return None
        with open(local, encoding="utf-8", errors="replace") as f:
            return f.read()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def users(passwd_text):
    out = {}
    for line in (passwd_text or "").splitlines():
        f = line.split(":")
        if len(f) >= 7:
            out[f[0]] = {"uid": int(f[2]), "gid": int(f[3]), "home": f[5], "shell": f[6]}
    return out


def cloud_init_errors(disk):
    """(result.json errors, {stage: errors} from status.json), None where a file is missing."""
    result = disk.read("/var/lib/cloud/data/result.json")
    status = disk.read("/var/lib/cloud/data/status.json")
    res_err = json.loads(result)["v1"]["errors"] if result else None
    st_err = None
    if status:
        v1 = json.loads(status)["v1"]
        st_err = {k: v.get("errors", []) for k, v in v1.items() if isinstance(v, dict) and "errors" in v}
    return res_err, st_err


def common(disk, sc):
    """Checks for every scenario; returns the facts later checks use."""
    finish = disk.read("/var/lib/vmtest/finish.json")
    finish = json.loads(finish) if finish else {}
    ok("the guest's finish hook ran and found boot-finished (cloud-init's final stage ended)",
       finish.get("boot_finished") is True, json.dumps(finish))
    iid = sc["instance_id"]
    ok(f"/var/lib/cloud/instances/{iid}/boot-finished exists (this boot's instance)",
       disk.exists(f"/var/lib/cloud/instances/{iid}/boot-finished"))
    versions = disk.read("/var/lib/vmtest/versions")
    ok("the guest recorded its kernel, cloud-init and cron versions", bool(versions))
    note("guest versions: " + "; ".join((versions or "none").strip().splitlines()))
    signals = disk.read("/var/lib/vmtest/cfn-signal.codes")
    args = disk.read("/var/lib/vmtest/cfn-signal.args")
    codes = (signals or "").split()
    note(f"cfn-signal stub calls: {(args or '(none)').strip()!r}")
    ok("cfn-signal was called once, for this stack's Instance resource in its region",
       len(codes) == 1 and args is not None
       and f"--stack {sc['stack_name']} --resource Instance --region {sc['region']}" in args,
       f"codes={codes} args={args!r}")
    output_log = disk.read("/var/log/cloud-init-output.log") or ""
    passwd = users(disk.read("/etc/passwd"))
    return {"finish": finish, "codes": codes, "output_log": output_log, "passwd": passwd}


def check_good(disk, sc, work):
    f = common(disk, sc)
    res_err, st_err = cloud_init_errors(disk)
    ok("cloud-init: result.json has no errors", res_err == [], f"result.json errors: {res_err}")
    ok("cloud-init: status.json has no errors in any stage",
       st_err is not None and all(not e for e in st_err.values()), f"status.json errors: {st_err}")
    ok("cfn-signal stub got exit code 0", f["codes"] == ["0"], f"codes: {f['codes']}")
    ok("the bootstrap logged 'first backup complete' and 'done'",
       "first backup complete" in f["output_log"] and re.search(r"s3backup-bootstrap: \S+ done", f["output_log"]),
       f["output_log"][-3000:])

    # The binary.
    st = disk.stat("/usr/local/bin/s3backup")
    ok("/usr/local/bin/s3backup is a regular file, root:root, mode 0755",
       st is not None and st["type"] == "regular" and (st["uid"], st["gid"], st["mode"]) == (0, 0, 0o755), st)
    local = disk.dump("/usr/local/bin/s3backup")
    ok("/usr/local/bin/s3backup is the artifact, byte for byte (sha256)",
       local is not None and sha256(local) == sc["artifact_sha256"])

    # The user and the folder.
    user, bdir = sc["backup_user"], sc["backup_dir"]
    u = f["passwd"].get(user)
    ok(f"the backup user {user!r} exists and is not root", u is not None and u["uid"] != 0, u)
    uid = u["uid"] if u else None
    st = disk.stat(bdir)
    ok(f"{bdir} is a directory owned by {user}, mode 0700",
       st is not None and st["type"] == "directory" and st["uid"] == uid and st["mode"] == 0o700, st)

    # The cron.d file: owner and mode as on the disk, then the project's own cron.d checker.
    st = disk.stat("/etc/cron.d/s3backup")
    ok("/etc/cron.d/s3backup is a regular file, root:root, mode 0644",
       st is not None and st["type"] == "regular" and (st["uid"], st["gid"], st["mode"]) == (0, 0, 0o644), st)
    crond = disk.dump("/etc/cron.d/s3backup")
    if crond:
        r = subprocess.run([sys.executable, CFNHELP, "check-crond", crond, user], capture_output=True, text=True)
        ok(f"cfnhelp check-crond: a valid cron.d file with one job for {user}", r.returncode == 0, r.stderr)
        text = open(crond, encoding="utf-8").read()
        note("/etc/cron.d/s3backup:\n" + text.rstrip())
        job = [line for line in text.splitlines() if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
        ok(f"the job's schedule is the test's Schedule parameter ({sc['schedule']}) and runs the installed binary",
           len(job) == 1 and job[0].startswith(f"{sc['schedule']} {user} /usr/local/bin/s3backup "), job)
    else:
        ok("/etc/cron.d/s3backup could be read", False)

    # The job ran from cron, as the user, after the late objects were put in the bucket.
    fin = f["finish"]
    ok("a cron run backed up the objects added after the bootstrap (the guest waited for it)",
       fin.get("late_backed_up") is True and fin.get("no_run_left") is True, json.dumps(fin))
    entries = []
    jtext = disk.read("/var/lib/vmtest/journal.json") or ""
    for line in jtext.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    late_at = fin.get("late_uploaded_at", float("inf"))

    def ts(e):
        return int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6

    cron_lines = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "CRON"
                  and f"({user}) CMD (" in str(e.get("MESSAGE")) and "/usr/local/bin/s3backup" in str(e.get("MESSAGE"))]
    # Only the cron job pipes into `logger -t s3backup` (the bootstrap's first backup writes to
    # cloud-init's output log), and the logger runs as the job's user.
    job_lines = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "s3backup" and ts(e) > late_at]
    for e in cron_lines[-2:] + job_lines[-2:]:
        note(f"journal: {e.get('SYSLOG_IDENTIFIER')}[_UID={e.get('_UID')}]: {e.get('MESSAGE')}")
    ok(f"the journal has the job's output (tag s3backup) logged by uid {uid} after the late upload",
       any(str(e.get("_UID")) == str(uid) for e in job_lines),
       f"{len(job_lines)} s3backup lines after {late_at}: {[(e.get('_UID'), e.get('MESSAGE')) for e in job_lines]}")
    # cron logs '(user) CMD (...)' when it starts the job: the run that logged after the late upload
    # was started by cron, at most a few minutes before (the start may precede the upload's end).
    ok(f"the journal has cron's '({user}) CMD (/usr/local/bin/s3backup ...)' line for that run",
       any(0 <= ts(j) - ts(c) < 300 for c in cron_lines for j in job_lines),
       f"CRON CMD lines at {[ts(c) for c in cron_lines]}; job lines at {[ts(j) for j in job_lines]}")
    state = disk.rdump(f"{u['home'] if u else '/home/' + user}/.local/state/s3backup")
    reports = []
    if state:
        for d, _, names in os.walk(state):
            reports += [os.path.join(d, n) for n in names if n == "last-run.json"]
    if ok("exactly one last-run.json in the user's ~/.local/state/s3backup", len(reports) == 1, reports):
        rep = json.load(open(reports[0], encoding="utf-8"))
        note(f"last-run.json: {json.dumps(rep)}")
        rst = os.stat(reports[0])
        ok(f"last-run.json was written by {user} and reports no failed or refused key",
           rst.st_uid == uid and rep.get("failed") == [] and rep.get("refused") == [] and "error" not in rep,
           f"uid={rst.st_uid} report={rep}")

    # The backup tree equals the bucket.
    expected = os.path.join(work, "expected")
    tree = disk.rdump(bdir)
    if ok(f"{bdir} could be copied out of the image", tree is not None):
        r = subprocess.run(["sh", SCENARIO_SH, "assert-tree"], capture_output=True, text=True,
                           env={**os.environ, "DEST": tree, "EXPECTED_DIR": expected})
        ok("the backup tree holds exactly the bucket's objects, each with the same sha256 "
           "(tests/e2e/scenario.sh assert-tree)", r.returncode == 0, r.stdout + r.stderr)
    listing = disk.read("/var/lib/vmtest/bucket.json")
    want = {}
    for d, _, names in os.walk(expected):
        for n in names:
            p = os.path.join(d, n)
            want[os.path.relpath(p, expected)] = os.path.getsize(p)
    got = {o["key"]: o["size"] for o in json.loads(listing)} if listing else None
    ok("the bucket's listing in the guest (after the run) is exactly the expected keys and sizes",
       got == want, f"bucket: {got}\nexpected: {want}")


def check_badsha(disk, sc, work):
    f = common(disk, sc)
    ok("cfn-signal stub got a non-zero exit code", len(f["codes"]) == 1 and f["codes"][0] not in ("", "0"),
       f"codes: {f['codes']}")
    ok("the bootstrap said the SHA-256 did not match and nothing was installed",
       "nothing installed" in f["output_log"] and "SHA-256" in f["output_log"], f["output_log"][-3000:])
    ok("no /usr/local/bin/s3backup", not disk.exists("/usr/local/bin/s3backup"))
    ok("no /usr/local/bin/.s3backup.new", not disk.exists("/usr/local/bin/.s3backup.new"))
    ok("no /etc/cron.d/s3backup", not disk.exists("/etc/cron.d/s3backup"))
    ok(f"no backup user {sc['backup_user']!r}", sc["backup_user"] not in f["passwd"])
    ok(f"no {sc['backup_dir']}", not disk.exists(sc["backup_dir"]))
    res_err, st_err = cloud_init_errors(disk)
    # The failing runcmd is reported by cloud-init's scripts-user module, and nothing else failed.
    all_errors = (res_err or []) + [e for errs in (st_err or {}).values() for e in errs]
    ok("cloud-init reports the failed runcmd (scripts-user) and no other error",
       bool(res_err) and all("scripts-user" in str(e) or "scripts_user" in str(e) for e in all_errors),
       f"result.json: {res_err}\nstatus.json: {st_err}")


def main():
    kind, image, work = sys.argv[1:4]
    with open(os.path.join(work, "scenario.json"), encoding="utf-8") as fh:
        sc = json.load(fh)
    disk = Disk(image, os.path.join(work, "dump"))
    {"good": check_good, "badsha": check_badsha}[kind](disk, sc, work)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
