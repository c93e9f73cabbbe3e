#!/usr/bin/env bash
# Runs the instance bootstrap of cfn/stack.yaml for real, inside a private mount namespace, the way
# cloud-init would on the instance, and checks what it did. Started by cfn/tests/run as
#   unshare -m bash cfn/tests/sandbox.sh
# with the environment below. Nothing here changes the host: /etc, /usr/local, /home, /var, /opt and
# /dev are overlays whose upper layers live in $W; cfn-signal, the package manager and systemctl are
# stubs that record their arguments. The binary comes from moto's S3 (AWS_ENDPOINT_URL).
#
# Environment: W (work dir of this scenario), SCENARIO (al2023 | al2 | badsha), USERDATA (the
# rendered #cloud-config), HELP (cfnhelp.py), EXPECT_SHA256 (sha256 of the real binary),
# STACK_NAME, REGION, IMAGES_BUCKET, BACKUP_USER, BACKUP_DIR, SCHEDULE, SEED (local copy of the bucket's
# objects), AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
# Prints one "ok - ..." or "not ok - ..." line per check.
set -uo pipefail
: "${W:?}" "${SCENARIO:?}" "${USERDATA:?}" "${HELP:?}" "${EXPECT_SHA256:?}" "${STACK_NAME:?}"
: "${REGION:?}" "${IMAGES_BUCKET:?}" "${BACKUP_USER:?}" "${BACKUP_DIR:?}" "${SEED:?}" "${SCHEDULE:?}"
: "${AWS_ENDPOINT_URL:?}"

ok() { echo "ok - sandbox $SCENARIO: $*"; }
notok() { echo "not ok - sandbox $SCENARIO: $*"; }
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else notok "$name"; fi
}
show() { sed 's/^/    | /' "$@" >&2; }

# ------------------------------------------------------------------------------ the sandbox
mount --make-rprivate / || { notok "mount --make-rprivate (needs root and unshare -m)"; exit 1; }
for d in etc usr/local home var opt dev; do
  [ -d "/$d" ] || { notok "/$d missing on this host"; exit 1; }
  mkdir -p "$W/ov/$d/up" "$W/ov/$d/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/ov/$d/up,workdir=$W/ov/$d/work" "/$d" \
    || { notok "overlay on /$d"; exit 1; }
done
# A cron daemon installed on the host must not stand in for the one the bootstrap has to install.
for f in /usr/sbin/cron /usr/sbin/crond /usr/bin/crond; do
  if [ -e "$f" ]; then mount --bind /dev/null "$f"; fi
done

# The system log: a datagram socket on /dev/log, like journald's or rsyslog's.
python3 - "$W/syslog.log" <<'EOF' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
os.chmod("/dev/log", 0o666)
with open(sys.argv[1], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536) + b"\n")
EOF
syslog_pid=$!
trap 'kill $syslog_pid 2>/dev/null' EXIT
for _ in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done

# Stubs: they log their arguments to $W/calls.log and act like the real thing just enough.
stub=$W/stub state=$W/stubstate
mkdir -p "$stub" "$state/units" "$state/active"
cat > "$stub/cfn-signal.stub" <<EOF
#!/bin/sh
echo "cfn-signal \$*" >> "$W/calls.log"
echo "\$*" >> "$W/signal.log"
EOF
chmod 755 "$stub/cfn-signal.stub"
cat > "$stub/systemctl" <<EOF
#!/bin/sh
echo "systemctl \$*" >> "$W/calls.log"
case "\$1" in
  cat) [ -e "$state/units/\$2" ] ;;
  enable) [ "\$2" = --now ] && [ -e "$state/units/\$3" ] && touch "$state/active/\$3" ;;
  restart) [ -e "$state/units/\$2" ] && touch "$state/active/\$2" || exit 1
           [ -e /etc/cron.d/s3backup ] && echo "systemctl: cron file present at restart" >> "$W/calls.log" ;;
  is-active) [ "\$2" = --quiet ] && [ -e "$state/active/\$3" ] ;;
  *) exit 1 ;;
esac
EOF
chmod 755 "$stub/systemctl"
# The package manager of the scenario: installing cronie brings crond and its unit, installing
# aws-cfn-bootstrap brings cfn-signal; anything else fails (there is no network anyway).
pm=dnf
[ "$SCENARIO" = al2 ] && pm=yum
cat > "$stub/$pm" <<EOF
#!/bin/sh
echo "$pm \$*" >> "$W/calls.log"
[ "\$1" = install ] && [ "\$2" = -y ] || exit 1
case "\$3" in
  cronie) printf '#!/bin/sh\nexit 0\n' > "$stub/crond"; chmod 755 "$stub/crond"
          touch "$state/units/crond.service" ;;
  aws-cfn-bootstrap) cp "$stub/cfn-signal.stub" "$stub/cfn-signal" ;;
  *) exit 1 ;;
esac
EOF
chmod 755 "$stub/$pm"
if [ "$SCENARIO" = al2 ]; then
  # Amazon Linux 2: cronie is installed and its unit exists; cfn-signal lives in /opt/aws/bin,
  # which is not on cloud-init's PATH.
  printf '#!/bin/sh\nexit 0\n' > "$stub/crond"
  chmod 755 "$stub/crond"
  touch "$state/units/crond.service"
  mkdir -p /opt/aws/bin
  cp "$stub/cfn-signal.stub" /opt/aws/bin/cfn-signal
fi

# ------------------------------------------------------------------------------ cloud-init's part
tmp_before=$(find /tmp -maxdepth 1 -name 's3backup-bootstrap.*' | sort)
# init stage: write_files (before any user exists); final stage: runcmd as a shell script.
python3 "$HELP" write-files "$USERDATA" > "$W/write-files.log" 2>&1 \
  || { notok "write_files"; show "$W/write-files.log"; exit 1; }
python3 "$HELP" runcmd "$USERDATA" > "$W/runcmd.sh" || { notok "runcmd"; exit 1; }
(cd / && PATH="$stub:$PATH" FIRST_BACKUP_TIMEOUT=300 sh "$W/runcmd.sh") > "$W/bootstrap.log" 2>&1
rc=$?
tmp_after=$(find /tmp -maxdepth 1 -name 's3backup-bootstrap.*' | sort)
check "bootstrap left no temp dir in /tmp" [ "$tmp_before" = "$tmp_after" ]

signal_args=$(cat "$W/signal.log" 2>/dev/null)
expected_signal_tail="--stack $STACK_NAME --resource Instance --region $REGION"
bin=/usr/local/bin/s3backup
cron_file=/etc/cron.d/s3backup

if [ "$SCENARIO" = badsha ]; then
  : "${EXPECT_SHA256_WRONG:?}"
  check "bootstrap fails on a SHA-256 mismatch (exit $rc)" [ "$rc" -ne 0 ]
  check "cfn-signal reports failure once (got: $signal_args)" \
    [ "$signal_args" = "-e $rc $expected_signal_tail" ]
  check "the log names the mismatch" grep -q "is not $EXPECT_SHA256_WRONG: nothing installed" "$W/bootstrap.log"
  check "no binary installed" [ ! -e "$bin" ]
  check "no partial binary left" [ ! -e /usr/local/bin/.s3backup.new ]
  # shellcheck disable=SC2016 # expanded by eval, on purpose
  check "no cron job written" eval '[ ! -e "$cron_file" ] && [ ! -e /etc/cron.d/.s3backup.tmp ]'
  check "no user created" eval "! getent passwd '$BACKUP_USER' >/dev/null"
  check "no backup folder created" [ ! -e "$BACKUP_DIR" ]
  echo "    bootstrap log ($SCENARIO):" >&2
  show "$W/bootstrap.log"
  exit 0
fi

check "bootstrap exits 0" [ "$rc" -eq 0 ]
[ "$rc" -eq 0 ] || show "$W/bootstrap.log"
check "cfn-signal reports success once (got: $signal_args)" \
  [ "$signal_args" = "-e 0 $expected_signal_tail" ]
if [ "$SCENARIO" = al2023 ]; then
  check "aws-cfn-bootstrap installed with dnf (no cfn-signal on the AMI)" \
    grep -qx "dnf install -y aws-cfn-bootstrap" "$W/calls.log"
  check "cronie installed with dnf (no cron daemon on the AMI)" \
    grep -qx "dnf install -y cronie" "$W/calls.log"
else
  check "nothing installed with yum (AL2 has cronie and /opt/aws/bin/cfn-signal)" \
    eval "! grep -q '^yum' '$W/calls.log'"
fi
check "crond.service enabled and started" grep -qx "systemctl enable --now crond.service" "$W/calls.log"
check "crond.service restarted after the cron job was written (cron may miss a file by its mtime)" \
  grep -qx "systemctl: cron file present at restart" "$W/calls.log"

# The user and the folder.
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd "$BACKUP_USER")
check "backup user exists, unprivileged (uid ${uid:-none})" [ "${uid:-0}" -ne 0 ]
check "backup user cannot log in (shell ${shell:-none})" [ "${shell##*/}" = nologin ]
check "backup folder is 0700 and owned by the backup user" \
  [ "$(stat -c '%a %U' "$BACKUP_DIR" 2>/dev/null)" = "700 $BACKUP_USER" ]

# The binary.
check "binary installed root:root 0755" [ "$(stat -c '%a %U %G' "$bin" 2>/dev/null)" = "755 root root" ]
check "installed binary has the expected SHA-256" \
  [ "$(sha256sum "$bin" 2>/dev/null | cut -d' ' -f1)" = "$EXPECT_SHA256" ]
check "no temp files left next to the binary or the cron job" \
  eval '[ ! -e /usr/local/bin/.s3backup.new ] && [ ! -e /etc/cron.d/.s3backup.tmp ]'

# The cron job: valid, root 0644, one line for the backup user, written by the binary.
if python3 "$HELP" check-crond "$cron_file" "$BACKUP_USER" > "$W/cron.parsed" 2> "$W/cron.err"; then
  ok "cron.d file valid, root:root 0644, one job for $BACKUP_USER"
else
  notok "cron.d file valid, root:root 0644, one job for $BACKUP_USER"
  show "$W/cron.err"
  [ -e "$cron_file" ] && show "$cron_file"
fi
echo "    $cron_file:" >&2
[ -e "$cron_file" ] && show "$cron_file"
{ read -r cron_shell; read -r cron_path; read -r cron_cmd; } < "$W/cron.parsed"
at_schedule() {
  local line
  while IFS= read -r line; do
    [[ $line == "$SCHEDULE $BACKUP_USER "* ]] && return 0
  done < "$cron_file"
  return 1
}
check "the job runs at the deployed schedule ($SCHEDULE) as $BACKUP_USER" at_schedule
# shellcheck disable=SC2016 # expanded by eval, on purpose
check "the job runs $bin on the images bucket into the backup folder, output to the system log" \
  eval '[[ "$cron_cmd" == "$bin "* && "$cron_cmd" == *"$IMAGES_BUCKET"* && "$cron_cmd" == *"$BACKUP_DIR"* && "$cron_cmd" == *"| logger -t s3backup" ]]'

# The first backup, run by the bootstrap as the backup user.
check "first backup copied every object of the bucket" diff -r "$SEED" "$BACKUP_DIR"
check "backed-up files belong to the backup user" \
  eval "[ -z \"\$(find '$BACKUP_DIR' ! -user '$BACKUP_USER' -print -quit)\" ]"

# Now the job exactly as cron runs it: as the backup user, with the file's SHELL and PATH and
# cron's HOME/LOGNAME, nothing else inherited. The user's AWS config stands in for the instance
# profile (credentials) and points the SDK at moto (endpoint_url).
mkdir -p "$home/.aws"
printf '[default]\nendpoint_url = %s\n' "$AWS_ENDPOINT_URL" > "$home/.aws/config"
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
  "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$home/.aws/credentials"
chown -R "$BACKUP_USER:" "$home/.aws"
chmod 0700 "$home/.aws"
chmod 0600 "$home/.aws/config" "$home/.aws/credentials"
# (SEED mirrors the bucket; each scenario adds its own key.)
mkdir -p "$SEED/added-later-$SCENARIO"
head -c 70000 /dev/urandom > "$SEED/added-later-$SCENARIO/new photo.jpg"
aws s3 cp --only-show-errors "$SEED/added-later-$SCENARIO/new photo.jpg" \
  "s3://$IMAGES_BUCKET/added-later-$SCENARIO/new photo.jpg" || notok "uploading a new object to moto"
: > "$W/syslog.log"
runuser -u "$BACKUP_USER" -- env -i SHELL="$cron_shell" PATH="${cron_path#PATH=}" HOME="$home" \
  LOGNAME="$BACKUP_USER" USER="$BACKUP_USER" "${cron_shell#SHELL=}" -c "$cron_cmd"
cron_rc=$?
check "the cron line, run as written, exits 0" [ "$cron_rc" -eq 0 ]
check "the cron line backed up the object added after the bootstrap" diff -r "$SEED" "$BACKUP_DIR"
sleep 0.5
check "the cron line's output reached the system log, tagged s3backup" grep -q ' s3backup\(\[[0-9]*\]\)\?: ' "$W/syslog.log"
echo "    system log of the cron run:" >&2
show "$W/syslog.log"

if [ "$SCENARIO" = al2023 ]; then
  # Running the bootstrap again (by hand, as the comment in it says) must succeed and change nothing.
  before=$(sha256sum "$cron_file" "$bin")
  (cd / && PATH="$stub:$PATH" sh "$W/runcmd.sh") > "$W/bootstrap2.log" 2>&1
  rc2=$?
  check "a second bootstrap run succeeds" [ "$rc2" -eq 0 ]
  check "a second bootstrap run leaves binary and cron job as they were" \
    [ "$(sha256sum "$cron_file" "$bin")" = "$before" ]
fi
echo "    bootstrap log ($SCENARIO):" >&2
show "$W/bootstrap.log"
