#!/bin/bash
# s3backup instance bootstrap: verify the binary; attach, check and mount the
# backup volume (formatting only a blank one); the backup user and folder; cron and
# the job; a first backup; report to the stack on every exit path. Output:
# /var/log/cloud-init-output.log. Safe to run again by hand.
set -euo pipefail
umask 022
# cloud-init's PATH lacks /opt/aws/bin, where AL2 keeps cfn-signal.
PATH=$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/aws/bin
export PATH
log() { echo "s3backup-bootstrap: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }
die() { log "ERROR: $*"; exit 1; }
imds() { # IMDSv2: meta-data/$1
  local t
  t=$(curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' \
    http://169.254.169.254/latest/api/token) || return 1
  curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" \
    "http://169.254.169.254/latest/meta-data/$1"
}
# Every network call is bounded, so a silent network fails with its reason
# well inside the creation policy.
aws_() { timeout -k 5 90 aws --cli-connect-timeout 10 --cli-read-timeout 30 "$@"; }

# The trap comes first: a failure even while reading the parameters is signalled.
WORK=
finish() {
  rc=$?
  trap - EXIT
  [ -n "$WORK" ] && rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then log "done"; else log "FAILED (exit $rc)"; fi
  local st=SUCCESS id
  [ "$rc" -eq 0 ] || st=FAILURE
  if [ -z "${STACK_NAME:-}" ] || [ -z "${SIGNAL_RESOURCE:-}" ] || [ -z "${REGION:-}" ]; then
    log "no stack to signal: the parameters were not read"
  elif command -v cfn-signal >/dev/null; then
    timeout -k 5 120 cfn-signal -e "$rc" --stack "$STACK_NAME" \
      --resource "$SIGNAL_RESOURCE" --region "$REGION" || log "cfn-signal itself failed"
  elif id=$(imds instance-id); then
    aws_ cloudformation signal-resource --region "$REGION" --stack-name "$STACK_NAME" \
      --logical-resource-id "$SIGNAL_RESOURCE" --unique-id "$id" --status "$st" \
      || log "aws cloudformation signal-resource failed"
  else
    log "no cfn-signal and no instance id: the stack's creation policy will time out"
  fi
  exit "$rc"
}
trap finish EXIT
ENV_FILE=${1:-/etc/s3backup/bootstrap.env}
# shellcheck source=/dev/null
. "$ENV_FILE"
FIRST_BACKUP_TIMEOUT=${FIRST_BACKUP_TIMEOUT:-600}
VOLUME_WAIT=${VOLUME_WAIT:-600}
POLL=${POLL:-10}
BIN=/usr/local/bin/s3backup
CRON_FILE=/etc/cron.d/s3backup
MNT=/srv/s3backup
STATE_DIR=$MNT/state
# Replaced and deleted files: on the backup's file system (s3backup renames them).
HISTORY_DIR=$MNT/history
MAX_DELETE=50
FS_LABEL=s3backup-data

# 0. The folder this root script will hand to the backup user: only on the volume.
rel=${BACKUP_DIR#"$MNT"/}
{ [ "$rel" != "$BACKUP_DIR" ] && [ -n "$rel" ]; } || die "BACKUP_DIR $BACKUP_DIR is not below $MNT"
case /$rel/ in
  */./* | */../* | *//*) die "BACKUP_DIR $BACKUP_DIR has a '.', '..' or empty component" ;;
  /state/* | /history/* | /lost+found/*) die "BACKUP_DIR $BACKUP_DIR is inside $MNT/state, $MNT/history or lost+found" ;;
esac

# 1. Tools. $1: a command; $2, $3: its package on RPM / Debian-like systems.
pkg_install() {
  if command -v dnf >/dev/null; then timeout -k 10 600 dnf install -y "$1"
  elif command -v yum >/dev/null; then timeout -k 10 600 yum install -y "$1"
  elif command -v apt-get >/dev/null && [ "$2" != - ]; then
    timeout -k 10 300 apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive timeout -k 10 600 apt-get install -y -q "$2"
  else return 1
  fi
}
need() { command -v "$1" >/dev/null || pkg_install "$2" "$3" || die "could not install $1 ($2)"; }
# cfn-signal first (some AL2023 AMIs lack it); without it, signal-resource reports.
command -v cfn-signal >/dev/null || pkg_install aws-cfn-bootstrap - \
  || log "no cfn-signal: the outcome goes to aws cloudformation signal-resource"
need aws awscli awscli
# AL2023 splits util-linux: logger is in util-linux-core, runuser is not.
need logger util-linux bsdutils
need runuser util-linux util-linux
need blkid util-linux util-linux
need wipefs util-linux util-linux
need mkfs.ext4 e2fsprogs e2fsprogs
need resize2fs e2fsprogs e2fsprogs
command -v crond >/dev/null || command -v cron >/dev/null || pkg_install cronie cron \
  || die "could not install a cron daemon"

# 2. Fetch the binary and verify it before anything is installed or created.
WORK=$(mktemp -d /tmp/s3backup-bootstrap.XXXXXX)
src="s3://$ARTIFACT_BUCKET/$ARTIFACT_KEY"
for try in 1 2 3 4 5 6; do
  # Retries cover the seconds in which a new instance profile is not usable yet.
  timeout -k 5 180 aws --cli-connect-timeout 10 --cli-read-timeout 30 s3 cp \
    --only-show-errors --region "$REGION" "$src" "$WORK/s3backup" && break
  [ "$try" -lt 6 ] || die "could not download $src"
  sleep 10
done
echo "$ARTIFACT_SHA256  $WORK/s3backup" | sha256sum -c --strict - \
  || die "SHA-256 of $src is not $ARTIFACT_SHA256: nothing installed"

# 3. The backup volume: attached as /dev/sdf (Amazon Linux's udev rules give that
#    name on Xen and Nitro); an NVMe device also carries the volume id in its serial.
DEV=
find_dev() {
  local v=$VOLUME_ID d
  for d in /dev/sdf /dev/xvdf "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${v/-/}"; do
    if [ -b "$d" ]; then DEV=$(readlink -f "$d"); return 0; fi
  done
  return 1
}
if ! find_dev; then
  iid=$(imds instance-id) || die "no instance id from the metadata service"
  deadline=$(($(date +%s) + VOLUME_WAIT))
  # A replaced instance may still hold the volume while it shuts down: wait for it.
  while ! find_dev; do
    read -r state holder < <(aws_ ec2 describe-volumes --region "$REGION" \
      --volume-ids "$VOLUME_ID" --output text \
      --query 'Volumes[0].[State,Attachments[0].InstanceId]' || echo unknown -)
    case $state in
      available) log "attaching $VOLUME_ID to $iid as /dev/sdf"
        aws_ ec2 attach-volume --region "$REGION" --volume-id "$VOLUME_ID" \
          --instance-id "$iid" --device /dev/sdf >/dev/null || log "attach-volume failed" ;;
      in-use) [ "$holder" = "$iid" ] || log "$VOLUME_ID is attached to $holder; waiting" ;;
      *) log "$VOLUME_ID is $state" ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] \
      || die "$VOLUME_ID not attached here after $VOLUME_WAIT s (last: $state, $holder)"
    sleep "$POLL"
  done
fi
log "backup volume $VOLUME_ID is $DEV"

# 4. Format only a device that holds nothing at all; mount only our file system.
brc=0
probe=$(blkid -p -o export "$DEV") || brc=$?
sigs=$(wipefs -n "$DEV") || die "wipefs -n $DEV failed"
field() { sed -n "s/^$1=//p" <<<"$probe"; }
if [ "$brc" -eq 2 ] && [ -z "$sigs" ]; then
  # Unknown to both, yet not blank (a fresh EBS volume reads zeros): keep it.
  cmp -s -n 1048576 "$DEV" /dev/zero \
    || die "$DEV holds data that blkid and wipefs do not know: nothing formatted"
  log "$DEV is blank: formatting it (ext4, label $FS_LABEL)"
  mkfs.ext4 -q -m 0 -L "$FS_LABEL" "$DEV"
elif [ "$brc" -eq 0 ] && [ "$(field TYPE)" = ext4 ] && [ "$(field LABEL)" = "$FS_LABEL" ] \
  && [ -z "$(field PTTYPE)" ]; then
  log "$DEV holds the backup's file system: keeping it"
else
  die "$DEV holds something this bootstrap did not make: nothing formatted, nothing mounted (blkid exit $brc: ${probe//$'\n'/ }; wipefs: ${sigs//$'\n'/ })"
fi
uuid=$(blkid -p -o value -s UUID "$DEV")
[ -n "$uuid" ] || die "no UUID on $DEV"
# (Not install -d on an existing one: it may be immutable, see below.)
[ -d "$MNT" ] || install -d -m 0755 "$MNT"
# Immutable while unmounted, so that nothing writes to the root volume in its place.
# Fatal when that fails: a writable bare mount point would let a job without its volume fill
# the root volume.
mountpoint -q "$MNT" || chattr +i "$MNT" || die "chattr +i $MNT failed: the bare mount point would stay writable"
awk -v m="$MNT" '$2 != m' /etc/fstab > /etc/.fstab.s3backup
echo "UUID=$uuid $MNT ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2" >> /etc/.fstab.s3backup
chmod 0644 /etc/.fstab.s3backup
mv -f /etc/.fstab.s3backup /etc/fstab
mountpoint -q "$MNT" || mount "$MNT" || die "could not mount UUID=$uuid on $MNT"
# With nofail, mount exits 0 when it cannot find the device: trust only what is mounted there.
mountpoint -q "$MNT" || die "$MNT is not a mount point after mount (UUID=$uuid not found?)"
src=$(findmnt -n -o SOURCE --mountpoint "$MNT") || die "findmnt found nothing mounted on $MNT"
[ "$(readlink -f "$src")" = "$DEV" ] || die "$MNT is mounted from $src, not from $DEV"
# A no-op unless the volume was enlarged (VOLUME_SIZE_GIB=$VOLUME_SIZE_GIB).
resize2fs "$DEV" 2>&1 || die "resize2fs $DEV failed"
log "$MNT: $(df -h --output=size,avail "$MNT" | tail -n 1)"

# 5. The unprivileged backup user. On a new root volume it takes the uid that
#    owns the state on the backup volume, so the files stay its own.
if ! id -u "$BACKUP_USER" >/dev/null 2>&1; then
  nologin=$(command -v nologin || echo /sbin/nologin)
  add_user() { useradd "$@" --create-home --user-group --shell "$nologin" \
    --comment "s3backup job" "$BACKUP_USER"; }
  old=0
  [ ! -d "$STATE_DIR" ] || old=$(stat -c %u "$STATE_DIR")
  if [ "$old" -ne 0 ] && ! getent passwd "$old" >/dev/null; then add_user --uid "$old"
  else add_user
  fi
fi
uid=$(id -u "$BACKUP_USER")
[ "$uid" -ne 0 ] || die "the backup user must not be root"
# Its folders: created 0700, or already its own; someone else's is never taken over.
own_dir() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    { [ -d "$1" ] && [ ! -L "$1" ]; } || die "$1 exists and is not a directory"
    local o
    o=$(stat -c %u "$1")
    [ "$o" = "$uid" ] || die "$1 belongs to uid $o, not to $BACKUP_USER: not taking it over"
    chmod 0700 "$1"
  else
    install -d -m 0700 -o "$BACKUP_USER" -g "$(id -gn "$BACKUP_USER")" "$1"
  fi
}
own_dir "$STATE_DIR"
own_dir "$HISTORY_DIR"
install -d -m 0755 "$(dirname "$BACKUP_DIR")"
own_dir "$BACKUP_DIR"
#    The backup as the user knows it: ~user/<name> links to it (the root volume is
#    new on every instance). Never replaces a folder, a file or another link.
home=$(getent passwd "$BACKUP_USER" | cut -d: -f6)
[ -d "$home" ] || die "the home folder of $BACKUP_USER ($home) does not exist"
LINK=$home/$(basename "$BACKUP_DIR")
if [ -L "$LINK" ]; then
  [ "$(readlink "$LINK")" = "$BACKUP_DIR" ] \
    || die "$LINK points to $(readlink "$LINK"), not to $BACKUP_DIR: not replacing it"
elif [ -e "$LINK" ]; then
  die "$LINK exists and is not a symlink: not replacing it"
else
  ln -s "$BACKUP_DIR" "$LINK"
  chown -h "$BACKUP_USER:$(id -gn "$BACKUP_USER")" "$LINK"
fi
[ "$(readlink -f "$LINK")" = "$BACKUP_DIR" ] || die "$LINK does not lead to $BACKUP_DIR"
log "$LINK -> $BACKUP_DIR"

# 6. The binary, root-owned and replaced atomically.
install -o root -g root -m 0755 "$WORK/s3backup" /usr/local/bin/.s3backup.new
mv -f /usr/local/bin/.s3backup.new "$BIN"
log "installed $BIN ($ARTIFACT_SHA256)"

# 7. A running cron daemon and the job, rendered by the binary itself.
unit=
for u in crond cron; do  # crond on RPM distributions, cron on Debian-likes
  if systemctl cat "$u.service" >/dev/null 2>&1; then unit=$u.service; break; fi
done
[ -n "$unit" ] || die "no crond.service or cron.service unit"
systemctl enable --now "$unit" || die "could not start $unit"
systemctl is-active --quiet "$unit" || die "$unit is not running"
#    A leading dot keeps cron from reading the file before it is complete.
#    --versions: the versions the bucket held since the last run go to history too
#    (before its lifecycle rule expires them).
"$BIN" cron-entry --schedule "$SCHEDULE" --user "$BACKUP_USER" \
  --bucket "$IMAGES_BUCKET" --dest "$BACKUP_DIR" --state-dir "$STATE_DIR" \
  --region "$REGION" --cloudwatch-namespace "$METRICS_NAMESPACE" \
  --history-dir "$HISTORY_DIR" --keep-days "$HISTORY_DAYS" --max-delete "$MAX_DELETE" \
  --restore-archived "$RESTORE_ARCHIVED_DAYS" --versions \
  > /etc/cron.d/.s3backup.tmp || die "s3backup cron-entry failed"
chown root:root /etc/cron.d/.s3backup.tmp
chmod 0644 /etc/cron.d/.s3backup.tmp
mv -f /etc/cron.d/.s3backup.tmp "$CRON_FILE"
log "wrote $CRON_FILE:"
cat "$CRON_FILE"
#    cronie (AL) watches /etc/cron.d with inotify, and AL2's cronie unit would kill
#    a running backup on restart. Debian's cron looks by mtime in whole seconds and
#    can miss a file written in the second of its last look: restart only that one.
if [ "$unit" = cron.service ]; then
  systemctl restart "$unit" || die "could not restart $unit"
  log "$unit restarted to load $CRON_FILE"
fi
systemctl is-active --quiet "$unit" || die "$unit is not running"

# 8. A first backup as the backup user. A bucket too big for the time limit keeps
#    the instance (cron carries on where this run stopped); 75: a run holds the lock.
log "first backup of s3://$IMAGES_BUCKET into $BACKUP_DIR"
rc=0
timeout -k 30 "$FIRST_BACKUP_TIMEOUT" runuser -u "$BACKUP_USER" -- "$BIN" --json \
  --bucket "$IMAGES_BUCKET" --dest "$BACKUP_DIR" --state-dir "$STATE_DIR" \
  --region "$REGION" --cloudwatch-namespace "$METRICS_NAMESPACE" \
  --history-dir "$HISTORY_DIR" --keep-days "$HISTORY_DAYS" --max-delete "$MAX_DELETE" \
  --restore-archived "$RESTORE_ARCHIVED_DAYS" --versions \
  > "$WORK/first-backup.json" || rc=$?
log "first backup report: $(cat "$WORK/first-backup.json")"
case $rc in
  0) log "first backup complete" ;;
  124|137) log "first backup still running after $FIRST_BACKUP_TIMEOUT s; cron continues it" ;;
  75) log "another backup run holds the lock" ;;
  *) die "first backup failed with exit code $rc" ;;
esac
