#!/usr/bin/env python3
"""tests/vm/vmcheck.py: the VM test's assertions, made from the host on the powered-off guest's root disk
(a raw ext4 image, read with debugfs: nothing is mounted, nothing in the guest judges itself).

  vmcheck.py good     IMAGE WORK  a blank backup disk formatted and mounted, everything installed, cron ran
  vmcheck.py replaced IMAGE WORK  a fresh root with good's backup disk: kept, grown, planted file kept,
                                  only the new object downloaded, cron ran
  vmcheck.py unknown  IMAGE WORK  a backup disk that is neither blank nor ours: untouched, failure signalled
  vmcheck.py badsha   IMAGE WORK  a wrong ArtifactSha256: nothing installed, failure signalled
  vmcheck.py backup-uid IMAGE WORK  prints the backup user's uid (for tests/vm/run between the boots)

WORK is the scenario's folder from tests/vm/run: it holds scenario.json (what was seeded and the stack's
parameters), expected/ (the bucket's content as files: seed plus the objects added after the bootstrap),
ebs.raw (the backup disk, ext4 without a partition table when the bootstrap made it) and
ebs.sha256.before, and receives dump/ (what is copied out of the images). Prints "ok - ..." /
"not ok - ..." lines (the caller counts them) and "# ..." notes; exits 1 when a check failed.
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
MNT = "/srv/s3backup"
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

    def readlink(self, path):
        """The target of a symlink (fast or not), or None."""
        out, _ = self._run(f'stat "{path}"')
        m = re.search(r'Fast link dest: "(.*)"', out)
        if m:
            return m.group(1)
        local = self.dump(path)  # a slow link: debugfs dumps its target as the file's content
        return open(local, encoding="utf-8").read() if local else None

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
    ok("cfn-signal was called once, for this stack's AutoScalingGroup resource in its region",
       len(codes) == 1 and args is not None
       and f"--stack {sc['stack_name']} --resource AutoScalingGroup --region {sc['region']}" in args,
       f"codes={codes} args={args!r}")
    # The UserData carries the bootstrap as a gz+b64 write_files entry: the guest's real cloud-init
    # decoded it into exactly cfn/bootstrap.sh, root 0755.
    boot = "/usr/local/sbin/s3backup-bootstrap"
    st = disk.stat(boot)
    local = disk.dump(boot)
    with open(os.path.join(REPO, "cfn", "bootstrap.sh"), "rb") as f:
        want = f.read()
    got = open(local, "rb").read() if local else None
    ok(f"cloud-init wrote {boot} from the gz+b64 entry: byte for byte cfn/bootstrap.sh, root 0755",
       got == want and st is not None and (st["uid"], st["mode"] & 0o7777) == (0, 0o755),
       f"stat={st} same={got == want}")
    output_log = disk.read("/var/log/cloud-init-output.log") or ""
    passwd = users(disk.read("/etc/passwd"))
    return {"finish": finish, "codes": codes, "output_log": output_log, "passwd": passwd}


def blkid(path, tag):
    r = subprocess.run(["blkid", "-p", "-o", "value", "-s", tag, path], capture_output=True, text=True)
    return r.stdout.strip()


def fs_bytes(path):
    r = subprocess.run(["dumpe2fs", "-h", path], capture_output=True, text=True)
    count = re.search(r"^Block count:\s+(\d+)", r.stdout, re.M)
    size = re.search(r"^Block size:\s+(\d+)", r.stdout, re.M)
    return int(count.group(1)) * int(size.group(1)) if count and size else None


def check_volume(disk, sc, work, f):
    """The backup disk: our ext4, in fstab by UUID with nofail, nothing under the mount point on root."""
    ebs_path = os.path.join(work, "ebs.raw")
    uuid = blkid(ebs_path, "UUID")
    ok("the backup disk holds ext4 labelled s3backup-data, no partition table",
       (blkid(ebs_path, "TYPE"), blkid(ebs_path, "LABEL"), blkid(ebs_path, "PTTYPE")) == ("ext4", "s3backup-data", ""),
       f"TYPE={blkid(ebs_path, 'TYPE')} LABEL={blkid(ebs_path, 'LABEL')} PTTYPE={blkid(ebs_path, 'PTTYPE')}")
    fstab = disk.read("/etc/fstab") or ""
    lines = [line.split() for line in fstab.splitlines() if len(line.split()) >= 4 and line.split()[1] == MNT]
    ok(f"/etc/fstab mounts it once, by UUID, on {MNT}, ext4, nofail",
       len(lines) == 1 and lines[0][0] == f"UUID={uuid}" and lines[0][2] == "ext4" and "nofail" in lines[0][3].split(","),
       fstab)
    out, _ = disk._run(f"ls -p {MNT}")  # one /inode/mode/uid/gid/name/size/ line an entry
    names = {line.split("/")[5] for line in out.splitlines() if line.startswith("/")} - {".", ".."}
    ok(f"the root disk's {MNT} (the mount point) holds nothing: the backup went to the backup disk",
       disk.exists(MNT) and not names, out)
    return Disk(ebs_path, os.path.join(work, "dump-ebs")), uuid


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
    ebs, uuid = check_volume(disk, sc, work, f)
    f["ebs"], f["uuid"] = ebs, uuid

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
    rel = "/" + os.path.relpath(bdir, MNT)
    st = ebs.stat(rel)
    ok(f"{bdir} is a directory on the backup disk owned by {user}, mode 0700",
       st is not None and st["type"] == "directory" and st["uid"] == uid and st["mode"] == 0o700, st)
    st = ebs.stat("/state")
    ok(f"{MNT}/state is a directory on the backup disk owned by {user}, mode 0700",
       st is not None and st["type"] == "directory" and st["uid"] == uid and st["mode"] == 0o700, st)
    st = ebs.stat("/history")
    ok(f"{MNT}/history is a directory on the backup disk owned by {user}, mode 0700",
       st is not None and st["type"] == "directory" and st["uid"] == uid and st["mode"] == 0o700, st)
    # The backup in the user's home: a symlink on the (fresh) root disk to the folder on the volume.
    link = f"{u['home'] if u else '/home/' + user}/{os.path.basename(bdir)}"
    st = disk.stat(link)
    ok(f"{link} on the root disk is a symlink of {user} to {bdir}",
       st is not None and st["type"] == "symlink" and st["uid"] == uid and disk.readlink(link) == bdir,
       f"{st} -> {disk.readlink(link) if st else None}")
    # The guest itself resolved it (readlink -f in the bootstrap) before logging this line; the
    # folder it leads to holds the bucket's tree (checked below on the backup disk).
    ok(f"the guest's bootstrap resolved {link} to {bdir} (its log line '{link} -> {bdir}')",
       re.search(rf"s3backup-bootstrap: \S+ {re.escape(link)} -> {re.escape(bdir)}\n", f["output_log"]) is not None,
       f["output_log"][-2000:])

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
        ok(f"the job keeps its state on the backup disk (--state-dir {MNT}/state)",
           len(job) == 1 and f" --state-dir {MNT}/state " in job[0], job)
        ok(f"the job keeps history on the backup disk (--history-dir {MNT}/history --keep-days 30 --max-delete 50)"
           " and restores no archived object (RestoreArchivedDays 0)",
           len(job) == 1 and f" --history-dir {MNT}/history --keep-days 30 --max-delete 50 " in job[0]
           and "--restore-archived" not in job[0] and f" --dest {bdir} " in job[0], job)
        ns = subprocess.run([sys.executable, CFNHELP, "template-value", os.path.join(REPO, "cfn", "stack.yaml"),
                             "Parameters.MetricsNamespace.Default"], capture_output=True, text=True).stdout.strip()
        # (The guest has no CloudWatch: the job's publish fails with a warning, which never changes
        # its exit code; cfn/tests/sandbox.sh sees the metric arrive in moto.)
        ok(f"the job publishes its metrics (--cloudwatch-namespace {ns})",
           bool(ns) and len(job) == 1 and f" --cloudwatch-namespace {ns} " in job[0], job)
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
    state = ebs.rdump("/state")
    reports = []
    if state:
        for d, _, names in os.walk(state):
            reports += [os.path.join(d, n) for n in names if n == "last-run.json"]
    if ok(f"exactly one last-run.json in {MNT}/state on the backup disk", len(reports) == 1, reports):
        rep = json.load(open(reports[0], encoding="utf-8"))
        note(f"last-run.json: {json.dumps(rep)}")
        rst = os.stat(reports[0])
        ok(f"last-run.json was written by {user} and reports no failed or refused key",
           rst.st_uid == uid and rep.get("failed") == [] and rep.get("refused") == [] and "error" not in rep,
           f"uid={rst.st_uid} report={rep}")

    # The backup tree equals the bucket.
    expected = os.path.join(work, "expected")
    tree = ebs.rdump(rel)
    if ok(f"{bdir} could be copied out of the backup disk", tree is not None):
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
    want.pop("planted.txt", None)  # on the backup disk only, never in the bucket
    ok("the bucket's listing in the guest (after the run) is exactly the expected keys and sizes",
       got == want, f"bucket: {got}\nexpected: {want}")
    return f


def check_replaced(disk, sc, work):
    f = check_good(disk, sc, work)
    log = f["output_log"]
    with open(os.path.join(os.path.dirname(work), "good-ebs-uuid"), encoding="utf-8") as fh:
        good_uuid = fh.read().strip()
    ok("the backup disk was not formatted again: same file system UUID as after the first boot",
       f["uuid"] == good_uuid and "formatting it" not in log and "holds the backup's file system: keeping it" in log,
       f"now {f['uuid']}, after the first boot {good_uuid}")
    size = fs_bytes(os.path.join(work, "ebs.raw"))
    ok("the file system grew with the enlarged disk (1 GiB -> 1.5 GiB)", size == 1536 << 20, f"{size} bytes")
    m = re.findall(r"first backup report: (\{.*\})", log)
    rep = json.loads(m[-1]) if m else {}
    note(f"first backup after the replacement: {json.dumps(rep)}")
    between = sum(len(n) for _, _, n in os.walk(os.path.join(work, "vmdata", "between")))
    before = sum(len(n) for _, _, n in os.walk(os.path.join(os.path.dirname(work), "data", "seed"))) + \
        sum(len(n) for _, _, n in os.walk(os.path.join(os.path.dirname(work), "data", "late")))
    ok(f"the first backup after the replacement downloaded only the {between} new object(s): "
       f"0 of the {before} unchanged ones",
       rep.get("downloaded") == between and rep.get("unchanged") == before and rep.get("failed") == [], rep)
    ok("the file planted on the backup disk between the boots is still there (in the tree check too)",
       f["ebs"].read("/" + os.path.relpath(sc["backup_dir"], MNT) + "/planted.txt") == sc["planted"] + "\n")


def check_unknown(disk, sc, work):
    f = common(disk, sc)
    ok("cfn-signal stub got a non-zero exit code", len(f["codes"]) == 1 and f["codes"][0] not in ("", "0"),
       f"codes: {f['codes']}")
    ok("the bootstrap said the device holds something it did not make, and formatted nothing",
       "holds something this bootstrap did not make: nothing formatted" in f["output_log"], f["output_log"][-3000:])
    with open(os.path.join(work, "ebs.sha256.before"), encoding="utf-8") as fh:
        before = fh.read()
    with open(os.path.join(work, "ebs.raw"), "rb") as fh:
        now = hashlib.sha256(fh.read()).hexdigest()
    ok("the backup disk's bytes are unchanged", before.split()[0] == now, f"{before.split()[0]} -> {now}")
    nothing_installed(disk, sc, f)


def nothing_installed(disk, sc, f):
    ok("no /usr/local/bin/s3backup", not disk.exists("/usr/local/bin/s3backup"))
    ok("no /usr/local/bin/.s3backup.new", not disk.exists("/usr/local/bin/.s3backup.new"))
    ok("no /etc/cron.d/s3backup", not disk.exists("/etc/cron.d/s3backup"))
    ok(f"no backup user {sc['backup_user']!r}", sc["backup_user"] not in f["passwd"])
    ok(f"no fstab line for {MNT}", f" {MNT} " not in (disk.read("/etc/fstab") or ""))
    res_err, st_err = cloud_init_errors(disk)
    # The failing runcmd is reported by cloud-init's scripts-user module, and nothing else failed.
    all_errors = (res_err or []) + [e for errs in (st_err or {}).values() for e in errs]
    ok("cloud-init reports the failed runcmd (scripts-user) and no other error",
       bool(res_err) and all("scripts-user" in str(e) or "scripts_user" in str(e) for e in all_errors),
       f"result.json: {res_err}\nstatus.json: {st_err}")


def check_badsha(disk, sc, work):
    f = common(disk, sc)
    ok("cfn-signal stub got a non-zero exit code", len(f["codes"]) == 1 and f["codes"][0] not in ("", "0"),
       f"codes: {f['codes']}")
    ok("the bootstrap said the SHA-256 did not match and nothing was installed",
       "nothing installed" in f["output_log"] and "SHA-256" in f["output_log"], f["output_log"][-3000:])
    ok(f"no {sc['backup_dir']}", not disk.exists(sc["backup_dir"]))
    with open(os.path.join(work, "ebs.sha256.before"), encoding="utf-8") as fh:
        before = fh.read()
    with open(os.path.join(work, "ebs.raw"), "rb") as fh:
        now = hashlib.sha256(fh.read()).hexdigest()
    ok("the blank backup disk was not touched (the binary is verified first)", before.split()[0] == now)
    nothing_installed(disk, sc, f)


def backup_uid(disk, sc, work):
    u = users(disk.read("/etc/passwd")).get(sc["backup_user"])
    if u is None:
        raise SystemExit(f"no user {sc['backup_user']} in the image")
    print(u["uid"])


def main():
    kind, image, work = sys.argv[1:4]
    with open(os.path.join(work, "scenario.json"), encoding="utf-8") as fh:
        sc = json.load(fh)
    disk = Disk(image, os.path.join(work, "dump"))
    {"good": check_good, "replaced": check_replaced, "unknown": check_unknown, "badsha": check_badsha,
     "backup-uid": backup_uid}[kind](disk, sc, work)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
