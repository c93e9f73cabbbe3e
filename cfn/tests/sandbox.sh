#!/usr/bin/env bash
# Runs the instance bootstrap of cfn/stack.yaml for real, inside a private mount namespace, the way
# cloud-init would on the instance, and checks what it did. Started by cfn/tests/run as
#   unshare -m bash cfn/tests/sandbox.sh
# with the environment below. Nothing here changes the host: /etc, /usr/local, /home, /var, /opt and
# /dev are overlays whose upper layers live in $W; cfn-signal, the package manager and systemctl are
# stubs that record their arguments. The binary comes from moto's S3 (AWS_ENDPOINT_URL).
#
# The backup volume is a real loop device (VOL); the EC2 API (describe-volumes, attach-volume),
# `aws cloudformation signal-resource` and the metadata service are stubs too.
#
# Environment: W (work dir of this scenario), SCENARIO (below), USERDATA (the rendered
# #cloud-config), HELP (cfnhelp.py), EXPECT_SHA256 (sha256 of the real binary), STACK_NAME, REGION,
# IMAGES_BUCKET, BACKUP_USER, BACKUP_DIR, SCHEDULE, SEED (local copy of the bucket's objects),
# AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; VOL (loop device of the backup volume)
# and VOL_FILE (its backing file), VOLUME_ID (the stack's BackupVolume), METRICS_NAMESPACE; EXPECT_LOG (failure scenarios: a line the log must contain);
# EXPECT_KEEP_DAYS and EXPECT_RESTORE_ARCHIVED (the HistoryDays and RestoreArchivedDays rendered).
# Scenarios that succeed:
#   al2023    AL2023-like (dnf installs cfn-signal, cronie and runuser); the volume is attached by
#             the bootstrap after another instance let it go; blank, so it is formatted
#   al2       AL2-like; a blank volume already present as /dev/xvdf
#   replaced  a fresh root with al2023's volume, grown, a file planted on it, a new object in the
#             bucket, the backup user's uid taken, no cfn-signal package (signal-resource instead)
# Scenarios that fail, signal it, and change nothing: badsha, held (the volume stays attached
# elsewhere), unknown-dos / unknown-vfat / unknown-data (a device that is not blank nor ours),
# takeover (the backup folder on the volume belongs to root), baddir (BACKUP_DIR=/etc), early (the
# parameters file breaks while it is read), nomount (mount exits 0 and mounts nothing, as it does
# with nofail when the device is missing), nochattr (chattr +i fails on the bare mount point).
# Prints one "ok - ..." or "not ok - ..." line per check.
set -uo pipefail
: "${W:?}" "${SCENARIO:?}" "${USERDATA:?}" "${HELP:?}" "${EXPECT_SHA256:?}" "${STACK_NAME:?}"
: "${REGION:?}" "${IMAGES_BUCKET:?}" "${BACKUP_USER:?}" "${BACKUP_DIR:?}" "${SEED:?}" "${SCHEDULE:?}"
: "${AWS_ENDPOINT_URL:?}" "${VOL:?}" "${VOL_FILE:?}" "${VOLUME_ID:?}" "${METRICS_NAMESPACE:?}"

ok() { echo "ok - sandbox $SCENARIO: $*"; }
notok() { echo "not ok - sandbox $SCENARIO: $*"; }
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else notok "$name"; fi
}
show() { sed 's/^/    | /' "$@" >&2; }
# Run a command; on failure show its output.
quiet_ok() {
  local out
  out=$("$@" 2>&1) && return 0
  printf '%s\n' "$out" | tail -n 30 | sed 's/^/    | /' >&2
  return 1
}

# ------------------------------------------------------------------------------ the sandbox
real_aws=$(command -v aws) real_curl=$(command -v curl) real_runuser=$(command -v runuser)
mount --make-rprivate / || { notok "mount --make-rprivate (needs root and unshare -m)"; exit 1; }
for d in etc usr/local home var opt dev srv; do
  [ -d "/$d" ] || { notok "/$d missing on this host"; exit 1; }
  mkdir -p "$W/ov/$d/up" "$W/ov/$d/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/ov/$d/up,workdir=$W/ov/$d/work" "/$d" \
    || { notok "overlay on /$d"; exit 1; }
done
# A cron daemon installed on the host must not stand in for the one the bootstrap has to install.
for f in /usr/sbin/cron /usr/sbin/crond /usr/bin/crond; do
  if [ -e "$f" ]; then mount --bind /dev/null "$f"; fi
done
# AL2023 splits util-linux: an AMI may have logger but no runuser (removed in an overlay of its
# folder; dnf's util-linux brings it back, into the stubs' folder).
cp "$real_runuser" "$W/runuser.real"
if [ "$SCENARIO" = al2023 ]; then
  rdir=$(dirname "$(readlink -f "$real_runuser")")
  mkdir -p "$W/ov/rdir/up" "$W/ov/rdir/work"
  if ! mount -t overlay overlay -o "lowerdir=$rdir,upperdir=$W/ov/rdir/up,workdir=$W/ov/rdir/work" "$rdir" \
    || ! rm -f "$rdir/runuser"; then
    notok "hiding runuser"
  fi
fi

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
iid=i-0sandbox00000001
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
  restart) [ -e "$state/units/\$2" ] && touch "$state/active/\$2" ;;
  is-active) [ "\$2" = --quiet ] && [ -e "$state/active/\$3" ] ;;
  *) exit 1 ;;
esac
EOF
chmod 755 "$stub/systemctl"
# The instance metadata service (IMDSv2) answers the instance id; every other URL goes to curl.
cat > "$stub/curl" <<EOF
#!/bin/sh
case "\$*" in
  *169.254.169.254/latest/api/token*) echo sandbox-token ;;
  *169.254.169.254/latest/meta-data/instance-id*) echo $iid ;;
  *169.254.169.254*) exit 22 ;;
  *) exec "$real_curl" "\$@" ;;
esac
EOF
chmod 755 "$stub/curl"
# The EC2 API and signal-resource; S3 calls go to the real CLI (moto). describe-volumes says
# another instance holds the volume for its first two calls (for ever in 'held'), then that it is
# available; attach-volume makes the device appear as /dev/sdf, as Amazon Linux's udev rules do.
cat > "$stub/aws" <<EOF
#!/bin/bash
svc=
for a in "\$@"; do case \$a in ec2 | cloudformation | s3 | s3api) svc=\$a; break ;; esac; done
case \$svc in
  ec2) echo "aws \$*" >> "$W/calls.log"
    case " \$* " in
      *" describe-volumes "*)
        n=\$((\$(cat "$state/describes" 2>/dev/null || echo 0) + 1)); echo \$n > "$state/describes"
        if [ "$SCENARIO" = held ] || [ \$n -le 2 ]; then printf 'in-use\ti-0previous0000001\n'
        elif [ -e "$state/attached" ]; then printf 'in-use\t$iid\n'
        else printf 'available\tNone\n'; fi ;;
      *" attach-volume "*) [[ " \$* " == *" --volume-id $VOLUME_ID --instance-id $iid --device /dev/sdf "* ]] || exit 254
        touch "$state/attached"; ln -s "$VOL" /dev/sdf; echo '{"State": "attaching"}' ;;
      *) exit 254 ;;
    esac ;;
  cloudformation) echo "aws \$*" >> "$W/calls.log"; echo "\$*" >> "$W/signal-resource.log" ;;
  *) exec "$real_aws" "\$@" ;;
esac
EOF
chmod 755 "$stub/aws"
# The package manager of the scenario: installing cronie brings crond and its unit, installing
# aws-cfn-bootstrap brings cfn-signal (except in 'replaced': an AMI whose repositories lack it),
# util-linux brings runuser; anything else fails (there is no network anyway).
pm=dnf
[ "$SCENARIO" = al2 ] && pm=yum
cat > "$stub/$pm" <<EOF
#!/bin/sh
echo "$pm \$*" >> "$W/calls.log"
[ "\$1" = install ] && [ "\$2" = -y ] || exit 1
case "\$3" in
  cronie) printf '#!/bin/sh\nexit 0\n' > "$stub/crond"; chmod 755 "$stub/crond"
          touch "$state/units/crond.service" ;;
  aws-cfn-bootstrap) [ "$SCENARIO" != replaced ] || exit 1
          cp "$stub/cfn-signal.stub" "$stub/cfn-signal" ;;
  util-linux) cp "$W/runuser.real" "$stub/runuser" ;;
  *) exit 1 ;;
esac
EOF
chmod 755 "$stub/$pm"
# nomount: a mount that succeeds without mounting anything; nochattr: a chattr that fails.
if [ "$SCENARIO" = nomount ]; then
  printf '#!/bin/sh\necho "mount $*" >> "%s/calls.log"\nexit 0\n' "$W" > "$stub/mount"
  chmod 755 "$stub/mount"
fi
if [ "$SCENARIO" = nochattr ]; then
  printf '#!/bin/sh\necho "chattr $*" >> "%s/calls.log"\necho "chattr: Operation not supported" >&2\nexit 1\n' "$W" > "$stub/chattr"
  chmod 755 "$stub/chattr"
fi
if [ "$SCENARIO" = al2 ]; then
  # Amazon Linux 2: cronie is installed and its unit exists; cfn-signal lives in /opt/aws/bin,
  # which is not on cloud-init's PATH.
  printf '#!/bin/sh\nexit 0\n' > "$stub/crond"
  chmod 755 "$stub/crond"
  touch "$state/units/crond.service"
  mkdir -p /opt/aws/bin
  cp "$stub/cfn-signal.stub" /opt/aws/bin/cfn-signal
fi

# ------------------------------------------------------------------------------ the backup volume
vol_mnt=$W/volmnt
mkdir -p "$vol_mnt"
case $SCENARIO in
  al2) ln -s "$VOL" /dev/xvdf ;;                 # Xen's name for /dev/sdf, already attached
  al2023 | held) ;;                              # not attached yet: the bootstrap attaches it
  *) ln -s "$VOL" /dev/sdf ;;
esac
before_new=0 before_files=0
if [ "$SCENARIO" = replaced ]; then
  # What a replacement meets: the volume as the last instance left it, with a file planted on it; a
  # new object in the bucket; a root volume whose next free uid is not the old one. (Not enlarged:
  # this container may not resize a mounted file system online; tests/vm proves the growth.)
  mount "$VOL" "$vol_mnt"
  old_uid=$(stat -c %u "$vol_mnt/state")
  before_files=$(find "$vol_mnt/${BACKUP_DIR#/srv/s3backup/}" -type f | wc -l)
  echo "planted between the instances" > "$vol_mnt/${BACKUP_DIR#/srv/s3backup/}/planted.txt"
  chown "$old_uid" "$vol_mnt/${BACKUP_DIR#/srv/s3backup/}/planted.txt"
  uuid_before=$(blkid -p -o value -s UUID "$VOL")
  umount "$vol_mnt"
  useradd --uid $((old_uid + 7)) --no-create-home squatter
  mkdir -p "$SEED/between"
  head -c 50000 /dev/urandom > "$SEED/between/new.jpg"
  aws s3 cp --only-show-errors "$SEED/between/new.jpg" "s3://$IMAGES_BUCKET/between/new.jpg" \
    || notok "uploading the object added between the instances"
  # The bucket's objects that this volume does not have yet (al2's cron run added one elsewhere).
  before_new=$(( $(find "$SEED" -type f | wc -l) - before_files ))
fi
if [ "$SCENARIO" = takeover ]; then
  mount "$VOL" "$vol_mnt"
  chown 0:0 "$vol_mnt/${BACKUP_DIR#/srv/s3backup/}"
  umount "$vol_mnt"
fi
vol_sha_before=$(sha256sum < "$VOL")

# ------------------------------------------------------------------------------ cloud-init's part
tmp_before=$(find /tmp -maxdepth 1 -name 's3backup-bootstrap.*' | sort)
# init stage: write_files (before any user exists); final stage: runcmd as a shell script.
python3 "$HELP" write-files "$USERDATA" > "$W/write-files.log" 2>&1 \
  || { notok "write_files"; show "$W/write-files.log"; exit 1; }
# 'early': the parameters file breaks after STACK_NAME was read (an unterminated quote).
[ "$SCENARIO" != early ] || echo "BROKEN='" >> /etc/s3backup/bootstrap.env
python3 "$HELP" runcmd "$USERDATA" > "$W/runcmd.sh" || { notok "runcmd"; exit 1; }
wait_s=60
[ "$SCENARIO" = held ] && wait_s=4
(cd / && PATH="$stub:$PATH" FIRST_BACKUP_TIMEOUT=300 VOLUME_WAIT=$wait_s POLL=1 sh "$W/runcmd.sh") > "$W/bootstrap.log" 2>&1
rc=$?
if [ "$SCENARIO" = al2023 ]; then umount "$rdir"; fi
tmp_after=$(find /tmp -maxdepth 1 -name 's3backup-bootstrap.*' | sort)
check "bootstrap left no temp dir in /tmp" [ "$tmp_before" = "$tmp_after" ]

signal_args=$(cat "$W/signal.log" 2>/dev/null)
expected_signal_tail="--stack $STACK_NAME --resource AutoScalingGroup --region $REGION"
bin=/usr/local/bin/s3backup
cron_file=/etc/cron.d/s3backup
mnt=/srv/s3backup

case $SCENARIO in al2023 | al2 | replaced) ;; *)
  : "${EXPECT_LOG:?}"
  check "bootstrap fails (exit $rc)" [ "$rc" -ne 0 ]
  if [ "$SCENARIO" = baddir ] || [ "$SCENARIO" = early ]; then
    # These fail before cfn-signal is installed: the fallback reports for this instance.
    check "no cfn-signal yet: failure reported once with aws cloudformation signal-resource" \
      [ "$(cat "$W/signal-resource.log" 2>/dev/null)" = "--cli-connect-timeout 10 --cli-read-timeout 30 cloudformation signal-resource --region $REGION --stack-name $STACK_NAME --logical-resource-id AutoScalingGroup --unique-id $iid --status FAILURE" ]
  else
    check "cfn-signal reports failure once (got: $signal_args)" \
      [ "$signal_args" = "-e $rc $expected_signal_tail" ]
  fi
  check "the log says why: '$EXPECT_LOG'" grep -qF -- "$EXPECT_LOG" "$W/bootstrap.log"
  check "no binary installed" [ ! -e "$bin" ]
  check "no partial binary left" [ ! -e /usr/local/bin/.s3backup.new ]
  # shellcheck disable=SC2016 # expanded by eval, on purpose
  check "no cron job written" eval '[ ! -e "$cron_file" ] && [ ! -e /etc/cron.d/.s3backup.tmp ]'
  if [ "$SCENARIO" = nomount ]; then
    check "no user created" eval "! getent passwd '$BACKUP_USER' >/dev/null"
    check "mount was called, exited 0, and nothing is mounted on $mnt" \
      eval "grep -qx 'mount $mnt' '$W/calls.log' && ! mountpoint -q $mnt"
  elif [ "$SCENARIO" != takeover ]; then
    check "no user created" eval "! getent passwd '$BACKUP_USER' >/dev/null"
    check "nothing mounted on $mnt and no fstab line for it" \
      eval "! mountpoint -q $mnt && ! grep -q ' $mnt ' /etc/fstab"
  fi
  # (takeover mounts the volume, which is its own, before it finds the folder it refuses; nomount
  # and nochattr format the blank volume before they fail.)
  case $SCENARIO in takeover | nomount | nochattr) ;; *)
    check "the volume's bytes are unchanged" [ "$(sha256sum < "$VOL")" = "$vol_sha_before" ] ;;
  esac
  if [ "$SCENARIO" = nochattr ]; then
    check "chattr +i was tried on the bare mount point $mnt" grep -qx "chattr +i $mnt" "$W/calls.log"
  fi
  if [ "$SCENARIO" = held ]; then
    check "it waited for the other instance, and never attached" \
      eval "[ \$(grep -c 'describe-volumes' '$W/calls.log') -ge 3 ] && ! grep -q attach-volume '$W/calls.log'"
  fi
  if [ "$SCENARIO" = baddir ]; then
    check "/etc still belongs to root, mode 755" [ "$(stat -c '%U %a' /etc)" = "root 755" ]
  fi
  if [ "$SCENARIO" = takeover ]; then
    check "the backup folder still belongs to root" \
      eval "mount '$VOL' '$vol_mnt' 2>/dev/null || mountpoint -q '$vol_mnt'; [ \"\$(stat -c %u '$vol_mnt/${BACKUP_DIR#/srv/s3backup/}')\" = 0 ]"
    umount "$vol_mnt" 2>/dev/null
  fi
  echo "    bootstrap log ($SCENARIO):" >&2
  show "$W/bootstrap.log"
  exit 0
esac

check "bootstrap exits 0" [ "$rc" -eq 0 ]
[ "$rc" -eq 0 ] || show "$W/bootstrap.log"
if [ "$SCENARIO" = replaced ]; then
  check "no cfn-signal: success reported once with aws cloudformation signal-resource for this instance" \
    [ "$(cat "$W/signal-resource.log" 2>/dev/null)" = "--cli-connect-timeout 10 --cli-read-timeout 30 cloudformation signal-resource --region $REGION --stack-name $STACK_NAME --logical-resource-id AutoScalingGroup --unique-id $iid --status SUCCESS" ]
else
  check "cfn-signal reports success once (got: $signal_args)" \
    [ "$signal_args" = "-e 0 $expected_signal_tail" ]
fi
if [ "$SCENARIO" = al2023 ]; then
  check "aws-cfn-bootstrap installed with dnf (no cfn-signal on the AMI)" \
    grep -qx "dnf install -y aws-cfn-bootstrap" "$W/calls.log"
  check "cronie installed with dnf (no cron daemon on the AMI)" \
    grep -qx "dnf install -y cronie" "$W/calls.log"
  check "util-linux installed with dnf (the AMI had logger but no runuser)" \
    grep -qx "dnf install -y util-linux" "$W/calls.log"
  check "it waited while another instance held the volume, then attached it as /dev/sdf to itself" \
    eval "grep -q 'is attached to i-0previous0000001; waiting' '$W/bootstrap.log' && grep -q 'attach-volume .*--volume-id .* --instance-id $iid --device /dev/sdf' '$W/calls.log'"
elif [ "$SCENARIO" = al2 ]; then
  check "nothing installed with yum (AL2 has cronie and /opt/aws/bin/cfn-signal)" \
    eval "! grep -q '^yum' '$W/calls.log'"
fi
[ "$SCENARIO" = al2023 ] || check "no EC2 call: the volume was already there" eval "! grep -q '^aws .*ec2' '$W/calls.log'"
check "crond.service enabled and started" grep -qx "systemctl enable --now crond.service" "$W/calls.log"
check "crond.service not restarted (cronie sees /etc/cron.d changes; a restart may kill a running backup)" \
  eval "! grep -q '^systemctl restart' '$W/calls.log'"

# The volume.
dev=$(readlink -f "$VOL")
check "the backup volume is mounted on $mnt" [ "$(findmnt -n -o SOURCE --mountpoint "$mnt")" = "$dev" ]
check "it holds ext4 labelled s3backup-data" \
  [ "$(blkid -p -o value -s TYPE "$VOL") $(blkid -p -o value -s LABEL "$VOL")" = "ext4 s3backup-data" ]
uuid=$(blkid -p -o value -s UUID "$VOL")
check "/etc/fstab mounts it by UUID with nofail, once" \
  [ "$(grep -c "^UUID=$uuid $mnt ext4 [^ ]*nofail" /etc/fstab) $(grep -c " $mnt " /etc/fstab)" = "1 1" ]
if [ "$SCENARIO" = replaced ]; then
  check "not formatted again: same UUID" [ "$uuid" = "$uuid_before" ]
  check "the log says it kept the file system" grep -q "holds the backup's file system: keeping it" "$W/bootstrap.log"
  check "the file planted between the instances survived" \
    [ "$(cat "$BACKUP_DIR/planted.txt" 2>/dev/null)" = "planted between the instances" ]
  check "the backup user got back its uid from the volume ($old_uid)" [ "$(id -u "$BACKUP_USER")" = "$old_uid" ]
  report=$(sed -n 's/.*first backup report: //p' "$W/bootstrap.log" | tail -n 1)
  check "the first backup downloaded only the $before_new new object(s), and $before_files unchanged (report: $report)" \
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(not (r["downloaded"] == int(sys.argv[2]) and r["unchanged"] == int(sys.argv[3])))' \
    "$report" "$before_new" "$before_files"
else
  check "the log says it formatted a blank volume" grep -q "is blank: formatting it" "$W/bootstrap.log"
fi

# The user and the folders.
IFS=: read -r _ _ uid _ _ home shell < <(getent passwd "$BACKUP_USER")
check "backup user exists, unprivileged (uid ${uid:-none})" [ "${uid:-0}" -ne 0 ]
check "backup user cannot log in (shell ${shell:-none})" [ "${shell##*/}" = nologin ]
check "backup folder is 0700 and owned by the backup user" \
  [ "$(stat -c '%a %U' "$BACKUP_DIR" 2>/dev/null)" = "700 $BACKUP_USER" ]
check "state folder $mnt/state is 0700 and owned by the backup user" \
  [ "$(stat -c '%a %U' "$mnt/state" 2>/dev/null)" = "700 $BACKUP_USER" ]
check "history folder $mnt/history is 0700 and owned by the backup user" \
  [ "$(stat -c '%a %U' "$mnt/history" 2>/dev/null)" = "700 $BACKUP_USER" ]
check "the backup folder, the state and the history are on the volume, not on the root file system" \
  eval "[ \"\$(findmnt -n -o SOURCE --target '$BACKUP_DIR')\" = '$dev' ] && [ -n \"\$(find '$mnt/state' -name last-run.json)\" ] && [ \"\$(findmnt -n -o SOURCE --target '$mnt/history')\" = '$dev' ]"
link=$home/${BACKUP_DIR##*/}
check "$link is a symlink of the backup user to $BACKUP_DIR" \
  eval "[ -L '$link' ] && [ \"\$(readlink '$link')\" = '$BACKUP_DIR' ] && [ \"\$(stat -c %U '$link')\" = '$BACKUP_USER' ]"

# The binary.
check "binary installed root:root 0755" [ "$(stat -c '%a %U %G' "$bin" 2>/dev/null)" = "755 root root" ]
check "installed binary has the expected SHA-256" \
  [ "$(sha256sum "$bin" 2>/dev/null | cut -d' ' -f1)" = "$EXPECT_SHA256" ]
check "no temp files left next to the binary, the cron job or fstab" \
  eval '[ ! -e /usr/local/bin/.s3backup.new ] && [ ! -e /etc/cron.d/.s3backup.tmp ] && [ ! -e /etc/.fstab.s3backup ]'

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
check "the job runs $bin on the images bucket into the backup folder, state on the volume, metrics to $METRICS_NAMESPACE, output to the system log" \
  eval '[[ "$cron_cmd" == "$bin "* && "$cron_cmd" == *"$IMAGES_BUCKET"* && "$cron_cmd" == *"--dest $BACKUP_DIR "* && "$cron_cmd" == *"--state-dir $mnt/state"* && "$cron_cmd" == *"--cloudwatch-namespace $METRICS_NAMESPACE"* && "$cron_cmd" == *"| logger -t s3backup" ]]'
job_has() { [[ "$cron_cmd" == *" $1 "* ]]; }
check "the job keeps history: --history-dir $mnt/history --keep-days ${EXPECT_KEEP_DAYS:?} --max-delete 50" \
  job_has "--history-dir $mnt/history --keep-days $EXPECT_KEEP_DAYS --max-delete 50"
if [ "${EXPECT_RESTORE_ARCHIVED:?}" = 0 ]; then
  check "RestoreArchivedDays 0: the job has no --restore-archived" eval "! job_has --restore-archived"
else
  check "RestoreArchivedDays $EXPECT_RESTORE_ARCHIVED: the job has --restore-archived $EXPECT_RESTORE_ARCHIVED" \
    job_has "--restore-archived $EXPECT_RESTORE_ARCHIVED"
fi
check "the job keeps the versions the bucket held between runs: --versions" job_has --versions
# The first backup published its outcome, where the alarms look (moto's CloudWatch).
succeeded_metric() {
  local max
  max=$("$real_aws" cloudwatch get-metric-statistics --namespace "$METRICS_NAMESPACE" --metric-name BackupSucceeded \
    --dimensions "Name=Bucket,Value=$IMAGES_BUCKET" --statistics Maximum --period 60 \
    --start-time "$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)" --end-time "$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)" \
    --query 'max(Datapoints[].Maximum)' --output text)
  [ "${max%.0}" = 1 ]
}
check "the first backup published BackupSucceeded = 1 for Bucket=$IMAGES_BUCKET in $METRICS_NAMESPACE (moto)" succeeded_metric

if [ "$SCENARIO" = replaced ]; then
  echo "    bootstrap log ($SCENARIO):" >&2
  show "$W/bootstrap.log"
  exit 0
fi
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
if [ "$SCENARIO" = al2023 ]; then
  # A replaced object: the cron run must keep its old bytes in the history folder.
  old_readme=$(cat "$SEED/notes/readme.txt")
  echo "hello, replaced" > "$SEED/notes/readme.txt"
  aws s3 cp --only-show-errors "$SEED/notes/readme.txt" "s3://$IMAGES_BUCKET/notes/readme.txt" \
    || notok "replacing notes/readme.txt in moto"
fi
as_cron() {
  "$W/runuser.real" -u "$BACKUP_USER" -- env -i SHELL="$cron_shell" PATH="${cron_path#PATH=}" HOME="$home" \
    LOGNAME="$BACKUP_USER" USER="$BACKUP_USER" "${cron_shell#SHELL=}" -c "$cron_cmd"
}
: > "$W/syslog.log"
as_cron
cron_rc=$?
check "the cron line, run as written, exits 0" [ "$cron_rc" -eq 0 ]
check "the cron line backed up the object added after the bootstrap" diff -r "$SEED" "$BACKUP_DIR"
check "the files are there through $link too" diff -r "$SEED" "$link/"
as_user() { "$W/runuser.real" -u "$BACKUP_USER" -- env HOME="$home" "$@"; }
if [ "$SCENARIO" = al2023 ]; then
  mapfile -t runs < <(ls "$mnt/history")
  kept_in_history() { [ "${#runs[@]}" = 1 ] && [ "$(cat "$mnt/history/${runs[0]}/notes/readme.txt" 2>/dev/null)" = "$old_readme" ]; }
  check "the replaced file's old bytes are in $mnt/history/<run-id>/notes/readme.txt (runs: ${runs[*]})" kept_in_history
  # cfn/README's verify, through the link as the user would type it.
  check "s3backup verify --dest $link --state-dir $mnt/state exits 0" \
    quiet_ok as_user "$bin" verify --dest "$link" --state-dir "$mnt/state"
  # cfn/README's restore of one file from history, with credentials that may write (moto's).
  check "s3backup restore --from-history ${runs[0]:-} --prefix notes/readme.txt puts the old bytes back into the bucket" \
    quiet_ok as_user "$bin" restore --dest "$link" --state-dir "$mnt/state" --bucket "$IMAGES_BUCKET" \
    --region "$REGION" --from-history "${runs[0]:-none}" --history-dir "$mnt/history" --prefix notes/readme.txt --overwrite
  restored() { [ "$("$real_aws" s3 cp --only-show-errors "s3://$IMAGES_BUCKET/notes/readme.txt" -)" = "$old_readme" ]; }
  check "the bucket's notes/readme.txt has its old bytes again" restored
  # Back in step with the bucket (the replaced scenario counts on it): one more run.
  echo "$old_readme" > "$SEED/notes/readme.txt"
  in_step() { as_cron && diff -r "$SEED" "$BACKUP_DIR"; }
  check "the cron line after the restore exits 0 and the backup equals the bucket again" in_step
fi
sleep 0.5
check "the cron line's output reached the system log, tagged s3backup" grep -q ' s3backup\(\[[0-9]*\]\)\?: ' "$W/syslog.log"
echo "    system log of the cron run:" >&2
show "$W/syslog.log"

if [ "$SCENARIO" = al2023 ]; then
  # Running the bootstrap again (by hand, as the comment in it says) must succeed and change nothing.
  before=$(sha256sum "$cron_file" "$bin" /etc/fstab)
  (cd / && PATH="$stub:$PATH" sh "$W/runcmd.sh") > "$W/bootstrap2.log" 2>&1
  rc2=$?
  check "a second bootstrap run succeeds" [ "$rc2" -eq 0 ]
  [ "$rc2" -eq 0 ] || show "$W/bootstrap2.log"
  unchanged() { [ "$(sha256sum "$cron_file" "$bin" /etc/fstab)" = "$before" ] && [ "$(blkid -p -o value -s UUID "$VOL")" = "$uuid" ]; }
  check "a second bootstrap run leaves binary, cron job and fstab as they were, and formats nothing" unchanged
  # Without the volume mounted (say it failed to attach at a reboot: nofail), the job must not fill
  # the root volume: the mount point is immutable until something is mounted on it.
  umount "$mnt"
  check "with the volume unmounted, nothing can be written under $mnt (immutable mount point)" \
    eval "! touch '$mnt/on-the-root-volume' 2>/dev/null && ! mkdir '$mnt/state' 2>/dev/null"
  (cd / && PATH="$stub:$PATH" sh "$W/runcmd.sh") > "$W/bootstrap3.log" 2>&1
  rc3=$?
  remounted() { [ "$rc3" -eq 0 ] && [ "$(findmnt -n -o SOURCE --mountpoint "$mnt")" = "$dev" ] && [ -d "$BACKUP_DIR" ]; }
  check "a bootstrap run with the volume unmounted mounts it again" remounted
  [ "$rc3" -eq 0 ] || show "$W/bootstrap3.log"
  # Something else where the link goes: never replaced; the bootstrap fails and names it.
  rm "$link" && ln -s /tmp "$link"
  refused() { # LOG MESSAGE: the bootstrap failed and said MESSAGE
    ! (cd / && PATH="$stub:$PATH" sh "$W/runcmd.sh") > "$1" 2>&1 && grep -qF "$2" "$1"
  }
  link_kept() { refused "$W/bootstrap4.log" "$link points to /tmp, not to $BACKUP_DIR: not replacing it" \
    && [ "$(readlink "$link")" = /tmp ]; }
  check "a link to elsewhere at $link: the bootstrap fails naming it, the link is left as it was" link_kept
  rm "$link" && mkdir "$link" && echo mine > "$link/own.txt"
  folder_kept() { refused "$W/bootstrap5.log" "$link exists and is not a symlink: not replacing it" \
    && [ ! -L "$link" ] && [ "$(cat "$link/own.txt")" = mine ]; }
  check "a folder at $link: the bootstrap fails naming it, the folder and its file are left as they were" folder_kept
fi
umount "$mnt" 2>/dev/null
echo "    bootstrap log ($SCENARIO):" >&2
show "$W/bootstrap.log"
