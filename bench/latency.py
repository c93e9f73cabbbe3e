#!/usr/bin/env python3
"""Scenario L (issue 26): listing at S3's latency. One bucket of many small objects on the local SeaweedFS,
every tool talking to it through bench/countproxy.py with --list-delay-ms (default 100: S3 takes 100-300 ms
a LIST page), so that the listing, not the server, decides the time:

  L0  no-op: each tool re-runs on a complete, up-to-date copy (nothing to fetch)
  L1  1% of the objects overwritten (same size, new content): each tool re-runs on the pre-change copy

s3backup runs with --list-concurrency 1 (one sequential listing, as before issue 26) and with its default
(parallel), plus any --list-concurrency values given with --s3backup-lists. Peers: rclone copy
(--use-server-modtime, as its documentation advises for S3: no HEAD per object), s5cmd sync, aws s3 sync
(v1, PyPI; skipped with --tools), and s3sync when `s3sync` is in the bench cache's cargo bin or on PATH.

Every copy starts from one template made by s3backup (file mtimes = LastModified, which every tool here
takes as "unchanged"). Destinations are on tmpfs: the figures are the listing and the comparison.
Results: OUT.md (table, machine), OUT-raw.csv (every run). Started by `bench/run latency [...]` (the bench venv).
"""
import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the same server, seeding, GNU time and process care as bench.py)
from bench import free_port, popen, rm, wait_http  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def key_name(i, n):
    """Nested like bench.py's photos/YYYY/MM/img_N.jpg: 10 years x 12 months of prefixes."""
    ym = i % 120
    return f"photos/{2015 + ym // 12}/{ym % 12 + 1:02d}/img_{i:0{len(str(n))}d}.jpg"


def flat_name(i, n):
    return f"img_{i:0{len(str(n))}d}.jpg"


def dir_bytes(root):
    """Bytes in the files under root (the state folder: the catalog and its journal)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


class Latency(bench.Bench):
    def start_proxy(self, tag, corrupt=False):
        port = free_port()
        log = os.path.join(self.logs, f"proxy-{tag}.requests")
        self.proxy = popen([self.python, os.path.join(HERE, "countproxy.py"), str(port), str(self.port), log,
                            "--list-delay-ms", str(self.args.list_delay_ms),
                            "--get-delay-ms", str(self.args.get_delay_ms)],
                           stdout=subprocess.DEVNULL, stderr=open(log + ".err", "wb"))
        wait_http(f"http://127.0.0.1:{port}/", "latency proxy", log + ".err")
        open(log, "wb").close()
        return f"http://127.0.0.1:{port}", log

    def s3sync_bin(self):
        cands = [os.path.join(self.args.cache, "cargo", "bin", "s3sync"), shutil.which("s3sync")]
        return next((c for c in cands if c and os.access(c, os.X_OK)), None)

    def l_argv(self, tool, bucket, dest, endpoint):
        if tool.startswith("s3backup"):
            lists = tool.partition("-l")[2] or None
            argv = [self.bin, "--bucket", bucket, "--dest", dest, "--endpoint-url", endpoint,
                    "--state-dir", self.state, "--json"]
            return argv + (["--list-concurrency", lists] if lists else [])
        if tool == "rclone":
            return [self.rclone, "copy", f"bench:{bucket}", dest, "--use-server-modtime"]
        if tool == "s5sync":
            return [self.s5cmd, "--endpoint-url", endpoint, "sync", f"s3://{bucket}/*", dest + "/"]
        if tool == "aws1":
            return [self.aws1, "s3", "sync", f"s3://{bucket}", dest, "--endpoint-url", endpoint,
                    "--only-show-errors"]
        if tool == "s3sync":
            return [self.s3sync_bin(), "--source-endpoint-url", endpoint, "--source-force-path-style",
                    "--source-access-key", bench.ACCESS_KEY, "--source-secret-access-key", bench.SECRET_KEY,
                    "--source-region", bench.REGION, f"s3://{bucket}", dest]
        raise KeyError(tool)

    def dest_of(self, tool):
        # Every s3backup variant uses one path, so that they share the template's catalog (the state
        # folder is keyed by the destination's path).
        return os.path.join(self.dest_root, "s3backup" if tool.startswith("s3backup") else tool)

    def restore(self, tool):
        """Put the template back at the tool's destination (and, for s3backup, its state)."""
        dest = self.dest_of(tool)
        rm(dest)
        subprocess.run(["cp", "-a", self.template, dest], check=True)
        if tool.startswith("s3backup"):
            rm(self.state)
            subprocess.run(["cp", "-a", self.template_state, self.state], check=True)

    def run_l(self):
        a = self.args
        n = a.objects
        name = flat_name if a.flat else key_name
        items = {name(i, n): a.size for i in range(n)}
        bucket = "latency-flat" if a.flat else "latency"
        self.start_server()
        expected, _ = self.seed(bucket, items)
        while a.wait_for_bin and not os.access(a.bin, os.X_OK):  # seeded while it builds
            time.sleep(5)
        self.state = os.path.join(self.dest_root, "s3backup.state")
        # The template: s3backup's full copy, straight from the server (no delay), kept aside.
        dest = self.dest_of("s3backup")
        r = self.measure("L-seed", "s3backup", 0, self.l_argv("s3backup", bucket, dest, self.endpoint),
                         self.env(self.endpoint), a.timeout)
        if r.rc != 0 or count_files(dest) != n:
            raise SystemExit(f"template copy failed: exit {r.rc}, {count_files(dest)} files; see {r.log}.err")
        print(f"   template: {n} files in {r.wall:.1f}s", flush=True)
        r.detail = f"{n} files"
        self.full = (r, dir_bytes(self.state))
        self.template = os.path.join(self.dest_root, "template")
        self.template_state = os.path.join(self.dest_root, "template.state")
        os.rename(dest, self.template)
        os.rename(self.state, self.template_state)

        tools = ["s3backup-l1", "s3backup"] + [f"s3backup-l{c}" for c in a.s3backup_lists.split(",") if c]
        tools += [t for t in ("rclone", "s5sync", "aws1", "s3sync") if t in a.peers.split(",")]
        if "s3sync" in tools and not self.s3sync_bin():
            print("   s3sync: not installed (cargo install --locked s3sync --root CACHE/cargo); skipped")
            tools.remove("s3sync")
        proxy, log = self.start_proxy("L")
        env = self.env(proxy)
        rows = []

        def one(scen, tool, rep, changed):
            dest = self.dest_of(tool)
            if changed or not os.path.exists(dest):  # a no-op leaves the copy as it was
                self.restore(tool)
            open(log, "wb").close()
            r = self.measure(scen, tool, rep, self.l_argv(tool, bucket, dest, proxy), env, a.timeout)
            counts, keys = self.count_requests(log, bucket)
            files = count_files(dest)
            ok_changed = sum(1 for k in changed if bench.file_sha256(os.path.join(dest, k)) == expected[k])
            r.correct = r.rc == 0 and not r.timeout and files == n and ok_changed == len(changed)
            r.detail = (f"{files} files" + (f", {ok_changed}/{len(changed)} changed fetched" if changed else ""))
            r.requests, r.keys_fetched = counts, len(keys)
            self.record(r)
            rows.append((r, counts))

        for rep in range(1, (a.noop_reps or a.reps) + 1):
            for tool in self.rotated(tools, rep):
                one("L0", tool, rep, [])
        # 1%: overwrite once; each run starts from the pre-change template, so every run fetches the same.
        keys = sorted(expected)
        changed = random.Random(26).sample(keys, max(1, round(n * a.change_fraction)))
        time.sleep(1.1)  # LastModified has whole seconds: later than every copy's mtime
        self.overwrite(bucket, changed, items, expected)
        for rep in range(1, a.reps + 1):
            for tool in self.rotated(tools, rep):
                one("L1", tool, rep, changed)
        self.stop_proxy()
        self.write(rows, tools, len(changed))

    def write(self, rows, tools, n_changed):
        a = self.args
        with open(a.out + "-raw.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scenario", "tool", "rep", "wall_s", "cpu_s", "maxrss_mib", "rc", "correct", "lists",
                        "gets", "heads", "detail", "notes"])
            for r, c in rows:
                w.writerow([r.scenario, r.tool, r.rep, r.wall, r.cpu, r.rss_kib and round(r.rss_kib / 1024, 1),
                            r.rc, r.correct, c["LIST"], c["GET"], c["HEAD"], r.detail, " ".join(r.notes)])
        label = {"s3backup-l1": "s3backup --list-concurrency 1 (sequential)",
                 "s3backup": "s3backup (default: parallel)", "rclone": "rclone copy --use-server-modtime",
                 "s5sync": "s5cmd sync", "aws1": "aws s3 sync (v1)", "s3sync": "s3sync"}
        out = [f"# Scenario L: {a.objects:,} objects ({'flat' if a.flat else 'photos/YYYY/MM/'}), "
               f"{a.list_delay_ms} ms per LIST, {a.get_delay_ms} ms per GET\n",
               "| machine | |", "| --- | --- |"]
        out += [f"| {k} | {v} |" for k, v in self.machine().items()]
        out += [f"| {k} | {v} |" for k, v in self.versions().items()]
        if self.s3sync_bin():
            out.append(f"| s3sync | {bench.sh_out([self.s3sync_bin(), '--version'])} |")
        out.append("")
        full, catalog = self.full
        out += ["## Full run: s3backup's first copy, straight from the server (no delay)\n",
                "| objects | wall s | CPU s | max RSS MiB | state folder (catalog) bytes | bytes per object |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |",
                f"| {a.objects:,} | {full.wall:.2f} | {full.cpu:.2f} | {full.rss_kib / 1024:.1f} | {catalog:,} | "
                f"{catalog / a.objects:.0f} |", ""]
        seq = {}
        for scen, what in (("L0", "no-op"), ("L1", f"{n_changed:,} objects ({a.change_fraction:.0%}) changed")):
            out += [f"## {scen}: {what}\n",
                    "| tool | wall median s | min | × sequential | CPU s | max RSS MiB | LISTs | GETs | correct "
                    "| µs per object | notes |",
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
            for tool in tools:
                rs = [(r, c) for r, c in rows if r.scenario == scen and r.tool == tool]
                walls = [r.wall for r, _ in rs if r.wall is not None]
                if not walls:
                    continue
                med = sorted(walls)[len(walls) // 2]
                if tool == "s3backup-l1":
                    seq[scen] = med
                cpu = sorted(r.cpu for r, _ in rs if r.cpu is not None)
                rss = max(r.rss_kib for r, _ in rs if r.rss_kib) / 1024
                r0, c0 = rs[-1]
                ratio = f"{seq[scen] / med:.1f}×" if seq.get(scen) else "-"
                out.append(f"| {label.get(tool, 's3backup --list-concurrency ' + tool.partition('-l')[2])} | "
                           f"{med:.2f} | {min(walls):.2f} | {ratio} | {cpu[len(cpu) // 2]:.2f} | {rss:.1f} | "
                           f"{c0['LIST']} | {c0['GET']} | {'yes' if all(r.correct for r, _ in rs) else '**NO**'} | "
                           f"{med / a.objects * 1e6:.1f} | "
                           f"{'; '.join([r0.detail] + r0.notes)} |")
            out.append("")
        with open(a.out + ".md", "w") as f:
            f.write("\n".join(out))
        print("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", required=True, help=argparse.SUPPRESS)
    p.add_argument("--cache", required=True, help=argparse.SUPPRESS)
    p.add_argument("--bin", help="s3backup binary (default as bench.py)")
    p.add_argument("--wait-for-bin", action="store_true", help="seed first, then wait until --bin exists")
    p.add_argument("--objects", type=int, default=200_000)
    p.add_argument("--size", type=int, default=256, help="object size in bytes (256)")
    p.add_argument("--flat", action="store_true", help="keys without any '/' (img_N.jpg) instead of photos/YYYY/MM/")
    p.add_argument("--list-delay-ms", type=int, default=100)
    p.add_argument("--get-delay-ms", type=int, default=0)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--noop-reps", type=int, default=0, help="repetitions of L0 (default: --reps)")
    p.add_argument("--disk", action="store_true",
                   help="destinations on disk under --workdir-root, not tmpfs (scenario M: a million files "
                        "per copy outgrow tmpfs's inodes)")
    p.add_argument("--change-fraction", type=float, default=0.01)
    p.add_argument("--s3backup-lists", default="", help="more --list-concurrency values to measure, e.g. 8,32")
    p.add_argument("--peers", default="rclone,s5sync,aws1,s3sync")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--workdir-root", default="/var/tmp")
    p.add_argument("--out", default=os.path.join(HERE, "results-latency"))
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    a.bin = os.path.abspath(a.bin) if a.wait_for_bin and a.bin else bench.pick_bin(a.bin)
    a.tmpfs, a.tools, a.small, a.parallel = not a.disk, None, False, 16
    b = Latency(a)
    t0 = time.time()
    try:
        b.run_l()
    finally:
        b.cleanup()
    print(f"== done in {time.time() - t0:.0f}s: {a.out}.md, {a.out}-raw.csv", flush=True)


if __name__ == "__main__":
    main()
