#!/bin/sh
# Tests scenario.sh itself, without S3 and without the real binary: a stand-in job copies a local folder
# into DEST the way s3backup does (temp file, mtime, rename), and each case checks that the scenario passes
# what it should pass and fails, with status 1, what it should fail.
# Usage: tests/e2e/selftest.sh [SHELL...]   (default: sh; e.g. `selftest.sh dash bash`)
# As root it also runs the job through su, as a throwaway user it adds (useradd) and removes on exit.
# Needs what scenario.sh needs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
scenario="$here/scenario.sh"
[ "$#" -gt 0 ] || set -- sh
passed=0
failed=0

work=$(mktemp -d)
test_user=
cleanup() {
	if [ -n "$test_user" ]; then userdel "$test_user" || echo "selftest: could not remove user $test_user" >&2; fi
	rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
# As root, a throwaway user with a home, to run the job through su
if [ "$(id -u)" = 0 ] && command -v useradd >/dev/null 2>&1; then
	useradd --home-dir "$work/home" --create-home --shell /bin/sh --user-group "s3bselftest$$" && test_user="s3bselftest$$"
fi

# The stand-in: `fake-s3backup --bucket SRC --dest DEST [--mode rewrite|leave-temp]`
cat >"$work/fake-s3backup" <<'EOF'
#!/bin/sh
set -eu
mode=normal
while [ "$#" -gt 0 ]; do
	case $1 in
	--bucket) src=$2; shift 2 ;;
	--dest) dest=$2; shift 2 ;;
	--mode) mode=$2; shift 2 ;;
	*) echo "fake-s3backup: unknown argument $1" >&2; exit 2 ;;
	esac
done
cd "$src"
find . -type f | sort | while IFS= read -r f; do
	t="$dest/$f"
	if [ "$mode" != rewrite ] && [ -f "$t" ] && [ "$(stat -c '%s %Y' "$f")" = "$(stat -c '%s %Y' "$t")" ]; then
		echo "skip $f"
		continue
	fi
	mkdir -p "$(dirname "$t")"
	tmp="$(dirname "$t")/.s3backup.tmp.$$"
	cp "$f" "$tmp"
	touch -r "$f" "$tmp"
	if [ "$mode" = leave-temp ]; then cp "$tmp" "$tmp.2"; fi
	mv "$tmp" "$t"
	echo "fetch $f"
done
echo "SHELL=$SHELL PATH=$PATH HOME=$HOME USER=$USER LOGNAME=$LOGNAME" >"$(dirname "$dest")/log/env"
EOF
chmod 755 "$work/fake-s3backup"
mkdir "$work/log"
chmod 777 "$work/log"

# The seeded "bucket", also the expected tree
mkdir -p "$work/bucket/2024/06" "$work/bucket/with space"
printf 'one' >"$work/bucket/2024/06/img_0001.jpg"
head -c 100000 /dev/urandom >"$work/bucket/2024/06/img_0002.jpg"
printf 'three' >"$work/bucket/with space/it's.png"
: >"$work/bucket/empty.jpg"
chmod -R a+rX "$work/bucket"

# write_cron NAME EXTRA_ARGS [USER]: a cron file like the one `s3backup cron-entry` prints
write_cron() {
	{
		echo '# generated for the scenario self-test'
		echo 'SHELL=/bin/sh'
		echo 'PATH=/usr/local/bin:/usr/bin:/bin'
		echo "30 2 * * * ${3:-root} $work/fake-s3backup --bucket '$work/bucket' --dest '$work/dest' $2 2>&1 | logger -t s3backup-selftest"
	} >"$work/$1"
	chmod 644 "$work/$1"
}

# expect STATUS DESCRIPTION SHELL ARGS...: runs the scenario, checks its exit status
expect() {
	want=$1
	what=$2
	shift 2
	got=0
	"$@" >"$work/out" 2>&1 || got=$?
	if [ "$got" = "$want" ]; then
		passed=$((passed + 1))
		echo "selftest: ok: $what (exit $got)"
	else
		failed=$((failed + 1))
		echo "selftest: FAILED: $what: exit $got, expected $want; output:"
		sed 's/^/    /' "$work/out"
	fi
}

fresh_dest() {
	rm -rf "$work/dest"
	mkdir -p "$work/dest"
	chmod 777 "$work/dest"
}

for sh in "$@"; do
	echo "selftest: with $sh"
	me=$(id -un)
	write_cron good.cron '' "$me"
	export S3BACKUP_CRON_FILE="$work/good.cron" DEST="$work/dest" EXPECTED_DIR="$work/bucket" BACKUP_USER=
	fresh_dest
	expect 0 "all, as the current user" "$sh" "$scenario" all
	expect 0 "the job saw cron's environment" test "$(cat "$work/log/env")" = "SHELL=/bin/sh PATH=/usr/local/bin:/usr/bin:/bin HOME=$HOME USER=$me LOGNAME=$me"
	expect 1 "a DEST that does not exist" env DEST="$work/empty" "$sh" "$scenario" assert-tree
	mkdir -p "$work/empty"
	expect 1 "assert-tree on an empty DEST" env DEST="$work/empty" "$sh" "$scenario" assert-tree

	fresh_dest
	expect 1 "assert-tree before the job ran" "$sh" "$scenario" assert-tree
	expect 0 "run-cron-command then assert-tree" "$sh" "$scenario" run-cron-command assert-tree
	echo extra >"$work/dest/extra.jpg"
	expect 1 "an extra file in DEST" "$sh" "$scenario" assert-tree
	rm "$work/dest/extra.jpg"
	cp "$work/dest/empty.jpg" "$work/empty.bak"
	printf x >"$work/dest/empty.jpg"
	expect 1 "a file with other content" "$sh" "$scenario" assert-tree
	cp "$work/empty.bak" "$work/dest/empty.jpg"
	rm "$work/dest/2024/06/img_0001.jpg"
	expect 1 "a missing file" "$sh" "$scenario" assert-tree
	ln -s /etc/passwd "$work/dest/2024/06/img_0001.jpg"
	expect 1 "a symlink in place of a file" "$sh" "$scenario" assert-tree
	rm "$work/dest/2024/06/img_0001.jpg"
	expect 0 "a run restores it" "$sh" "$scenario" run-cron-command assert-tree
	: >"$work/dest/with space/.s3backup.tmp.123"
	expect 1 "a temp file left" "$sh" "$scenario" assert-tree
	rm "$work/dest/with space/.s3backup.tmp.123"
	expect 2 "DEST unset" env -u DEST "$sh" "$scenario" assert-tree
	expect 2 "an unknown subcommand" "$sh" "$scenario" assert-everything

	write_cron rewrite.cron '--mode rewrite' "$me"
	expect 1 "assert-noop when the second run rewrites the files" env S3BACKUP_CRON_FILE="$work/rewrite.cron" "$sh" "$scenario" assert-noop
	write_cron temp.cron '--mode leave-temp' "$me"
	fresh_dest
	expect 1 "a job that leaves temp files" env S3BACKUP_CRON_FILE="$work/temp.cron" "$sh" "$scenario" run-cron-command assert-tree

	# % handling: \% reaches the command as %, a bare % starts its stdin
	printf 'SHELL=/bin/sh\n30 2 * * * %s touch %s/pct-a\\%%b; cat > %s/stdin %%line1%%line2\n' "$me" "$work" "$work" >"$work/pct.cron"
	expect 0 "a cron line with %" env S3BACKUP_CRON_FILE="$work/pct.cron" "$sh" "$scenario" run-cron-command
	expect 0 "\\% became %" test -e "$work/pct-a%b"
	expect 0 "bare % became stdin" test "$(cat "$work/stdin")" = "line1
line2"

	# NAME=value lines: the ones above the job line reach it, quotes stripped; the ones below do not
	# shellcheck disable=SC2016 # $FOO and $BAR are for the job's shell
	printf 'FOO = "above"\nBAR=1\n30 2 * * * %s echo "$FOO/${BAR:-unset}" > %s/envlines\nBAR=below\n' "$me" "$work" >"$work/envl.cron"
	expect 0 "NAME=value lines" env S3BACKUP_CRON_FILE="$work/envl.cron" "$sh" "$scenario" run-cron-command
	expect 0 "only those above the job line apply" test "$(cat "$work/envlines")" = "above/1"

	# cron file shapes
	write_cron two.cron '' "$me"
	tail -n 1 "$work/good.cron" >>"$work/two.cron"
	expect 1 "two job lines" env S3BACKUP_CRON_FILE="$work/two.cron" "$sh" "$scenario" assert-cron-file
	expect 1 "two job lines (run-cron-command)" env S3BACKUP_CRON_FILE="$work/two.cron" "$sh" "$scenario" run-cron-command
	printf '%s' "$(cat "$work/good.cron")" >"$work/nonl.cron"
	chmod 644 "$work/nonl.cron"
	expect 1 "no newline at the end" env S3BACKUP_CRON_FILE="$work/nonl.cron" "$sh" "$scenario" assert-cron-file
	expect 1 "no newline at the end: cron drops the job" env S3BACKUP_CRON_FILE="$work/nonl.cron" "$sh" "$scenario" run-cron-command
	sed 's/^30 2 \* \* \* /@daily /' "$work/good.cron" >"$work/at.cron"
	expect 1 "an @-schedule" env S3BACKUP_CRON_FILE="$work/at.cron" "$sh" "$scenario" assert-cron-file
	sed 's/^30 2 \* \* \* /30 2 * * /' "$work/good.cron" >"$work/four.cron"
	expect 1 "4 schedule fields" env S3BACKUP_CRON_FILE="$work/four.cron" "$sh" "$scenario" assert-cron-file
	ln -s "$work/good.cron" "$work/link.cron"
	expect 1 "a symlinked cron file" env S3BACKUP_CRON_FILE="$work/link.cron" "$sh" "$scenario" assert-cron-file
	expect 1 "a missing cron file" env S3BACKUP_CRON_FILE="$work/none.cron" "$sh" "$scenario" assert-cron-file
	other=root
	[ "$me" != root ] || other=nobody
	expect 1 "job user is not BACKUP_USER" env BACKUP_USER="$other" "$sh" "$scenario" assert-cron-file
	rm "$work/link.cron" "$work/two.cron" "$work/nonl.cron" "$work/at.cron" "$work/four.cron"

	if [ "$(id -u)" = 0 ]; then
		chmod 664 "$work/good.cron"
		expect 1 "mode 0664 as root" "$sh" "$scenario" assert-cron-file
		chmod 644 "$work/good.cron"
		write_cron nobody.cron '' nobody
		expect 1 "a BACKUP_USER whose home does not exist (cron would not run the job)" env S3BACKUP_CRON_FILE="$work/nobody.cron" BACKUP_USER=nobody "$sh" "$scenario" run-cron-command
		expect 1 "BACKUP_USER other than the job's user" env S3BACKUP_CRON_FILE="$work/good.cron" BACKUP_USER=nobody "$sh" "$scenario" run-cron-command
		if [ -n "$test_user" ]; then
			write_cron user.cron '' "$test_user"
			fresh_dest
			rm -f "$work/log/env"
			expect 0 "all, as BACKUP_USER=$test_user through su" env S3BACKUP_CRON_FILE="$work/user.cron" BACKUP_USER="$test_user" "$sh" "$scenario" all
			expect 0 "the files belong to $test_user" test "$(stat -c %U "$work/dest/2024/06/img_0001.jpg")" = "$test_user"
			expect 0 "the job saw $test_user's cron environment" test "$(cat "$work/log/env")" = "SHELL=/bin/sh PATH=/usr/local/bin:/usr/bin:/bin HOME=$work/home USER=$test_user LOGNAME=$test_user"
		fi
	fi
	rm -f "$work/log/env"
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
