#!/bin/sh
# The appliance scenario's assertions, shared by the NixOS VM test (nix/vm-test.nix) and the local
# end-to-end test in tests/. What one runs, the other runs: change it here, for both.
#
# Usage: scenario.sh SUBCOMMAND...   (several subcommands run in order; the first failure stops)
#
#   assert-cron-file  The cron.d file is in place and well formed: a regular file (not a symlink), owned by
#                     root with mode 0644 when this script runs as root, ending in a newline, no CR, no
#                     @-schedules, exactly one job line, whose schedule has 5 fields, whose user field names
#                     an existing user and equals BACKUP_USER when that is set.
#   run-cron-command  Runs the job line's command the way cron does: the text after the 5 schedule fields and
#                     the user field, verbatim, given to SHELL (default /bin/sh) with `-c`, in an environment
#                     holding only HOME, LOGNAME, USER, SHELL, PATH (default /usr/bin:/bin) and the file's
#                     NAME=value lines above the job line, with HOME as the working folder (cron runs no job
#                     whose HOME it cannot enter, nor does this). `%` as in cron: `\%` is a literal %, the
#                     first bare % ends the command and the rest, % turned into newlines, is its stdin
#                     (otherwise stdin is /dev/null). Runs as BACKUP_USER through `su -s /bin/sh` (needs root
#                     unless BACKUP_USER is the current user), or as the current user when BACKUP_USER is
#                     empty, with HOME as given (a test points HOME at a folder holding .aws/config and
#                     .aws/credentials). Its exit status is the pipeline's, that is the logger's: the
#                     assertions below are what prove the run.
#   assert-tree       DEST holds exactly EXPECTED_DIR's files: every regular file in EXPECTED_DIR is a
#                     regular file at the same relative path in DEST with the same SHA-256; DEST has no other
#                     file, symlink or special file (folders are not compared); no temp file named
#                     `.s3backup.tmp.*` is left anywhere under DEST.
#   assert-noop       Records every non-folder entry under DEST (inode, size, mtime in ns, type, path) and the
#                     list of folders, does run-cron-command once more, and asserts nothing changed; then
#                     assert-tree.
#   all               alone: assert-cron-file run-cron-command assert-tree assert-noop
#
# Environment:
#   S3BACKUP_CRON_FILE  the installed cron.d file (default /etc/cron.d/s3backup)
#   BACKUP_USER         the user the job runs as; empty or unset: the current user
#   DEST                the backup's destination folder (assert-tree, assert-noop)
#   EXPECTED_DIR        a local folder holding what was seeded into the bucket, key = relative path
#                       (assert-tree, assert-noop)
#
# Exit status: 0 all passed, 1 an assertion failed, 2 a usage error (bad subcommand, a variable missing).
# Output: one "scenario: ok: ..." line a passed step on stdout; "scenario: FAIL: ..." and the details on
# stderr. Needs a POSIX sh, coreutils (GNU stat for mtimes in ns), find, sed, /usr/bin/env and, for
# BACKUP_USER, su (util-linux's or shadow's).
set -eu
set -f # no globbing: schedule fields are full of *

CRON_FILE=${S3BACKUP_CRON_FILE:-/etc/cron.d/s3backup}
BACKUP_USER=${BACKUP_USER:-}
LC_ALL=C
export LC_ALL

ok() { printf 'scenario: ok: %s\n' "$*"; }
fail() {
	printf 'scenario: FAIL: %s\n' "$*" >&2
	exit 1
}
usage() {
	printf 'scenario: %s\n' "$*" >&2
	exit 2
}
need_var() {
	eval "_v=\${$1:-}"
	[ -n "$_v" ] || usage "$1 must be set for $2"
}

# Single-quotes $1 for the shell: abc'd -> 'abc'\''d'
shquote() {
	printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

trim() {
	_t=$1
	_t=${_t#"${_t%%[![:space:]]*}"}
	_t=${_t%"${_t##*[![:space:]]}"}
	printf '%s' "$_t"
}

# is_env_line LINE: cron's test for a NAME=value line (a name, optional blanks, then `=`).
is_env_line() {
	case $1 in
	*=*) ;;
	*) return 1 ;;
	esac
	_n=$(trim "${1%%=*}")
	case $_n in
	'' | *[[:space:]]*) return 1 ;;
	esac
	return 0
}

is_skip_line() {
	case $(trim "$1") in
	'' | '#'*) return 0 ;;
	esac
	return 1
}

# Reads the cron file. Sets: JOB_COUNT, JOB_LINE (the last job line), ENV_ASSIGNMENTS (shell-quoted
# NAME=value words, in file order, above the first job line), CRON_SHELL, CRON_PATH.
read_cron_file() {
	[ -e "$CRON_FILE" ] || fail "cron file $CRON_FILE does not exist"
	[ -r "$CRON_FILE" ] || fail "cron file $CRON_FILE is not readable"
	JOB_COUNT=0
	JOB_LINE=
	ENV_ASSIGNMENTS=
	CRON_SHELL=/bin/sh
	CRON_PATH=/usr/bin:/bin
	# A last line without its newline is left out, as cron leaves it out.
	while IFS= read -r line; do
		if is_skip_line "$line"; then
			continue
		elif is_env_line "$line"; then
			# cron gives a job the NAME=value lines above it only
			[ "$JOB_COUNT" = 0 ] || continue
			name=$(trim "${line%%=*}")
			value=$(trim "${line#*=}")
			case $value in
			\"*\" | \'*\')
				[ "${#value}" -ge 2 ] && value=${value#?} && value=${value%?}
				;;
			esac
			case $name in
			SHELL) CRON_SHELL=$value ;;
			PATH) CRON_PATH=$value ;;
			esac
			ENV_ASSIGNMENTS="$ENV_ASSIGNMENTS $(shquote "$name=$value")"
		else
			JOB_COUNT=$((JOB_COUNT + 1))
			JOB_LINE=$line
		fi
	done <"$CRON_FILE"
}

# Splits JOB_LINE. Sets: JOB_SCHEDULE (the 5 fields, single-spaced), JOB_USER, JOB_COMMAND (the rest of
# the line, verbatim but for the blanks before it).
split_job_line() {
	rest=$JOB_LINE
	JOB_SCHEDULE=
	i=0
	while [ "$i" -lt 6 ]; do
		rest=${rest#"${rest%%[![:space:]]*}"}
		field=${rest%%[[:space:]]*}
		[ -n "$field" ] || fail "job line has fewer than 5 schedule fields, a user and a command: $JOB_LINE"
		rest=${rest#"$field"}
		if [ "$i" -lt 5 ]; then
			JOB_SCHEDULE="${JOB_SCHEDULE:+$JOB_SCHEDULE }$field"
		else
			JOB_USER=$field
		fi
		i=$((i + 1))
	done
	JOB_COMMAND=${rest#"${rest%%[![:space:]]*}"}
	[ -n "$JOB_COMMAND" ] || fail "job line has no command: $JOB_LINE"
}

# Cron's % rule. Sets CMD_TEXT (the command) and CMD_INPUT (its stdin, empty for none) from JOB_COMMAND.
split_percent() {
	CMD_TEXT=
	CMD_INPUT=
	in_input=0
	rest=$JOB_COMMAND
	nl='
'
	while [ -n "$rest" ]; do
		c=${rest%"${rest#?}"}
		rest=${rest#?}
		if [ "$in_input" = 0 ]; then
			if [ "$c" = "\\" ] && [ "${rest%"${rest#?}"}" = '%' ]; then
				CMD_TEXT="$CMD_TEXT%"
				rest=${rest#?}
			elif [ "$c" = '%' ]; then
				in_input=1
			else
				CMD_TEXT="$CMD_TEXT$c"
			fi
		elif [ "$c" = "\\" ] && [ "${rest%"${rest#?}"}" = '%' ]; then
			CMD_INPUT="$CMD_INPUT%"
			rest=${rest#?}
		elif [ "$c" = '%' ]; then
			CMD_INPUT="$CMD_INPUT$nl"
		else
			CMD_INPUT="$CMD_INPUT$c"
		fi
	done
	[ "$in_input" = 0 ] || CMD_INPUT="$CMD_INPUT$nl"
}

cmd_assert_cron_file() {
	[ ! -L "$CRON_FILE" ] || fail "$CRON_FILE is a symlink, expected a regular file"
	[ -f "$CRON_FILE" ] || fail "$CRON_FILE is not a regular file"
	if [ "$(id -u)" = 0 ]; then
		owner_mode=$(stat -c '%u %a' "$CRON_FILE")
		[ "$owner_mode" = "0 644" ] || fail "$CRON_FILE: owner uid and mode are '$owner_mode', expected '0 644'"
	fi
	[ -s "$CRON_FILE" ] || fail "$CRON_FILE is empty"
	# cron ignores a last line without its newline
	[ "$(tail -c 1 "$CRON_FILE" | od -An -c | tr -d ' ')" = '\n' ] ||
		fail "$CRON_FILE does not end with a newline"
	case $(cat "$CRON_FILE") in
	*"$(printf '\r')"*) fail "$CRON_FILE has a carriage return" ;;
	esac
	read_cron_file
	[ "$JOB_COUNT" = 1 ] || fail "$CRON_FILE has $JOB_COUNT job lines, expected exactly 1"
	case $(trim "$JOB_LINE") in
	@*) fail "job line uses an @-schedule, expected 5 fields: $JOB_LINE" ;;
	esac
	split_job_line
	for field in $JOB_SCHEDULE; do
		case $field in
		*[!0-9A-Za-z*/,-]*) fail "schedule field '$field' has a character cron does not take: $JOB_LINE" ;;
		esac
	done
	id "$JOB_USER" >/dev/null 2>&1 || fail "job user '$JOB_USER' does not exist"
	if [ -n "$BACKUP_USER" ] && [ "$JOB_USER" != "$BACKUP_USER" ]; then
		fail "job user is '$JOB_USER', expected BACKUP_USER '$BACKUP_USER'"
	fi
	ok "cron file $CRON_FILE: one job, schedule '$JOB_SCHEDULE', user $JOB_USER"
}

cmd_run_cron_command() {
	read_cron_file
	[ "$JOB_COUNT" = 1 ] || fail "$CRON_FILE has $JOB_COUNT job lines, expected exactly 1"
	split_job_line
	split_percent
	# HOME, LOGNAME and USER first: NAME=value lines of the file come later and win, as in cron.
	# SHELL and PATH come from the file or cron's defaults.
	job_env="SHELL=$(shquote "$CRON_SHELL") PATH=$(shquote "$CRON_PATH")$ENV_ASSIGNMENTS"
	job="$(shquote "$CRON_SHELL") -c $(shquote "$CMD_TEXT")"
	me=$(id -un)
	if [ -z "$BACKUP_USER" ] || [ "$BACKUP_USER" = "$me" ]; then
		[ -n "${HOME:-}" ] || usage "HOME must be set to run as the current user"
		(cd "$HOME") || fail "cron would not run the job: it cannot change to HOME $HOME"
		printf 'scenario: running as %s: %s\n' "$me" "$CMD_TEXT" >&2
		runner="cd \"\$HOME\" && exec /usr/bin/env -i HOME=$(shquote "$HOME") LOGNAME=$(shquote "$me") USER=$(shquote "$me") $job_env $job"
		if [ -n "$CMD_INPUT" ]; then
			printf '%s' "$CMD_INPUT" | /bin/sh -c "$runner" || rc=$?
		else
			/bin/sh -c "$runner" </dev/null || rc=$?
		fi
	else
		[ "$JOB_USER" = "$BACKUP_USER" ] || fail "job user is '$JOB_USER', BACKUP_USER is '$BACKUP_USER'"
		[ "$(id -u)" = 0 ] || usage "running as BACKUP_USER=$BACKUP_USER needs root (this is $me)"
		# shellcheck disable=SC2016 # $HOME is the target user's, expanded by su's shell
		su -s /bin/sh "$BACKUP_USER" -c 'cd "$HOME"' </dev/null ||
			fail "cron would not run the job: $BACKUP_USER cannot change to its home folder"
		printf 'scenario: running as %s: %s\n' "$BACKUP_USER" "$CMD_TEXT" >&2
		# su sets HOME, LOGNAME and USER of the target user; the inner shell hands HOME on.
		runner="cd \"\$HOME\" && exec /usr/bin/env -i HOME=\"\$HOME\" LOGNAME=$(shquote "$BACKUP_USER") USER=$(shquote "$BACKUP_USER") $job_env $job"
		if [ -n "$CMD_INPUT" ]; then
			printf '%s' "$CMD_INPUT" | su -s /bin/sh "$BACKUP_USER" -c "$runner" || rc=$?
		else
			su -s /bin/sh "$BACKUP_USER" -c "$runner" </dev/null || rc=$?
		fi
	fi
	ok "ran the cron job's command (exit status ${rc:-0}, the pipeline's last command's)"
}

need_tree_vars() {
	need_var DEST "$1"
	need_var EXPECTED_DIR "$1"
	[ -d "$EXPECTED_DIR" ] || usage "EXPECTED_DIR $EXPECTED_DIR is not a folder"
	[ -d "$DEST" ] || fail "DEST $DEST is not a folder"
}

# Lists "sha256  ./relative/path" for each regular file under $1, sorted.
checksums() {
	(cd "$1" && find . -type f -exec sha256sum {} + | sort)
}

cmd_assert_tree() {
	need_tree_vars assert-tree
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	temps=$(find "$DEST" -name '.s3backup.tmp.*')
	[ -z "$temps" ] || fail "temp files left under $DEST:
$temps"
	others=$(find "$DEST" ! -type f ! -type d)
	[ -z "$others" ] || fail "$DEST holds entries that are neither files nor folders:
$others"
	checksums "$EXPECTED_DIR" >"$work/expected"
	[ -s "$work/expected" ] || usage "EXPECTED_DIR $EXPECTED_DIR holds no file"
	checksums "$DEST" >"$work/actual"
	missing=$(comm -23 "$work/expected" "$work/actual")
	extra=$(comm -13 "$work/expected" "$work/actual")
	if [ -n "$missing$extra" ]; then
		fail "$DEST differs from $EXPECTED_DIR
missing or different in DEST (expected sha256 and path):
${missing:-(none)}
extra or different in DEST (actual sha256 and path):
${extra:-(none)}"
	fi
	ok "$DEST holds exactly the $(wc -l <"$work/expected") files of $EXPECTED_DIR, checksums equal, no temp file"
}

# Lists inode, size, mtime (ns), type and path of every non-folder under DEST, then every folder.
snapshot() {
	(cd "$DEST" && find . ! -type d -exec stat -c '%i %s %.9Y %F %n' {} + | sort && find . -type d | sort)
}

cmd_assert_noop() {
	need_tree_vars assert-noop
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	snapshot >"$work/before"
	cmd_run_cron_command
	snapshot >"$work/after"
	changed=$(comm -3 "$work/before" "$work/after")
	[ -z "$changed" ] || fail "the second run changed $DEST (- before, + after):
$(comm -23 "$work/before" "$work/after" | sed 's/^/- /')
$(comm -13 "$work/before" "$work/after" | sed 's/^/+ /')"
	ok "a second run left every file of $DEST as it was (inode, size, mtime)"
	cmd_assert_tree
}

[ "$#" -gt 0 ] || usage "usage: $0 assert-cron-file|run-cron-command|assert-tree|assert-noop|all..."
[ "$*" != all ] || set -- assert-cron-file run-cron-command assert-tree assert-noop
for step in "$@"; do
	case $step in
	assert-cron-file | run-cron-command | assert-tree | assert-noop) ;;
	*) usage "unknown subcommand '$step' (assert-cron-file, run-cron-command, assert-tree, assert-noop, all)" ;;
	esac
done
for step in "$@"; do
	case $step in
	assert-cron-file) cmd_assert_cron_file ;;
	run-cron-command) cmd_run_cron_command ;;
	assert-tree) (cmd_assert_tree) ;;
	assert-noop) (cmd_assert_noop) ;;
	esac
done
