#!/usr/bin/env bash
# Checks the Nix files on a machine without a usable Nix: Debian's Nix 2.8 parses modern Nix but cannot
# evaluate nixpkgs 26.05, and nixpkgs cannot be fetched here. What only a machine with a current Nix can
# check (nix build, nix flake check, the VM test) is listed in nix/README.md.
#
# Needs: apt-get install nix-bin python3 shellcheck pyflakes3 git   (nix-bin: nix-instantiate and nix, 2.8)
#        cargo install deadnix   (this script stops, naming it, when it is missing)
# Usage: nix/check.sh   (from anywhere; exits non-zero at the first failing step)
#
# 1. nix-instantiate --parse on every .nix file of the repository (tracked or not, unless git-ignored)
# 2. deadnix --fail on the same files: no unused binding or argument
# 3. shellcheck on tests/e2e/*.sh and this script
# 4. flake.lock: its structure (version 7, github inputs locked by rev, narHash, lastModified), and that it
#    locks exactly the inputs flake.nix declares, with matching owner/repo/ref (inputs evaluated with
#    nix-instantiate, which needs no nixpkgs)
# 5. nix flake metadata --offline --no-update-lock-file on flake.nix + flake.lock: Nix itself accepts the
#    lock as complete and current, without fetching (it would try to fetch, and fail, if flake.nix asked
#    for an input the lock lacks or locks differently)
# 6. nix/vm-test.nix evaluated with stand-ins for nixpkgs and the package: the Python test script it
#    produces passes pyflakes (syntax, undefined and unused names), as the NixOS test driver requires
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
nix_flags=(--extra-experimental-features 'nix-command flakes')

step() { printf '\n== %s\n' "$*"; }
die() {
	printf 'nix/check.sh: FAIL: %s\n' "$*" >&2
	exit 1
}
need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

need nix-instantiate "apt-get install nix-bin"
need nix "apt-get install nix-bin"
need python3 "apt-get install python3"
need shellcheck "apt-get install shellcheck"
need git "apt-get install git"
need pyflakes3 "apt-get install pyflakes3"
need deadnix "cargo install deadnix (then put ~/.cargo/bin on PATH)"

mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort -u)
[ "${#nix_files[@]}" -gt 0 ] || die "no .nix file found"

step "nix-instantiate --parse (${#nix_files[@]} files, $(nix-instantiate --version))"
for f in "${nix_files[@]}"; do
	nix-instantiate --parse "$f" >/dev/null || die "$f does not parse"
	echo "parses: $f"
done

step "deadnix --fail ($(deadnix --version))"
deadnix --fail "${nix_files[@]}" || die "deadnix found unused code"
echo "no unused code"

step "shellcheck ($(shellcheck --version | sed -n 's/^version: //p'))"
shellcheck tests/e2e/*.sh nix/check.sh || die "shellcheck"
echo "clean: tests/e2e/*.sh nix/check.sh"

step "flake.lock against flake.nix"
inputs_json=$(nix-instantiate --eval --strict --json -E '(import ./flake.nix).inputs') ||
	die "cannot evaluate flake.nix's inputs"
INPUTS_JSON=$inputs_json python3 - <<'EOF' || die "flake.lock does not match flake.nix or is malformed"
import json, os, re, sys

inputs = json.loads(os.environ["INPUTS_JSON"])
with open("flake.lock") as f:
    lock = json.load(f)
errors = []

def check(cond, msg):
    if not cond:
        errors.append(msg)

check(lock.get("version") == 7, f"version is {lock.get('version')!r}, expected 7")
root_name = lock.get("root")
nodes = lock.get("nodes", {})
root_inputs = nodes.get(root_name, {}).get("inputs", {})
check(set(root_inputs) == set(inputs),
      f"the lock's root inputs {sorted(root_inputs)} are not flake.nix's inputs {sorted(inputs)}")
check(set(nodes) == {root_name, *root_inputs.values()},
      f"nodes {sorted(nodes)} are not the root and its inputs {sorted(root_inputs.values())}")

for name, spec in sorted(inputs.items()):
    url = spec.get("url", "")
    m = re.fullmatch(r"github:([^/]+)/([^/]+)(?:/([^/?]+))?", url)
    if not m:
        errors.append(f"input {name}: url {url!r} is not github:OWNER/REPO[/REF], which this check knows")
        continue
    owner, repo, ref = m.groups()
    want_original = {"type": "github", "owner": owner, "repo": repo, **({"ref": ref} if ref else {})}
    node = nodes.get(root_inputs.get(name), {})
    check(node.get("original") == want_original,
          f"input {name}: original {node.get('original')!r}, expected {want_original!r} from {url}")
    locked = node.get("locked", {})
    check(set(locked) == {"type", "owner", "repo", "rev", "narHash", "lastModified"},
          f"input {name}: locked has keys {sorted(locked)}")
    check(locked.get("type") == "github" and locked.get("owner") == owner and locked.get("repo") == repo,
          f"input {name}: locked {locked.get('owner')}/{locked.get('repo')} is not {owner}/{repo}")
    check(re.fullmatch(r"[0-9a-f]{40}", str(locked.get("rev"))) is not None,
          f"input {name}: rev {locked.get('rev')!r} is not 40 hex digits")
    check(re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", str(locked.get("narHash"))) is not None,
          f"input {name}: narHash {locked.get('narHash')!r} is not an SRI sha256")
    lm = locked.get("lastModified")
    check(isinstance(lm, int) and 1_500_000_000 < lm < 4_000_000_000,
          f"input {name}: lastModified {lm!r} is not a plausible Unix time")
    check("inputs" not in node and "flake" not in node,
          f"input {name}: has inputs or flake = false, which this flake's inputs do not")
    print(f"locked: {name} = github:{owner}/{repo}/{locked.get('rev')} ({ref or 'default branch'})")

for e in errors:
    print(f"flake.lock: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

step "nix flake metadata --offline ($(nix --version))"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# flake.nix and flake.lock alone: metadata reads nothing else, and a path: flake needs neither a commit
# (a git+file flake sees tracked files only) nor a copy of the work tree (target/ included) in the store.
cp flake.nix flake.lock "$tmp/"
nix "${nix_flags[@]}" flake metadata --offline --no-update-lock-file "path:$tmp" ||
	die "nix flake metadata rejects flake.lock"

step "nix/vm-test.nix evaluates, and its test script passes pyflakes ($(pyflakes3 --version | cut -d' ' -f1))"
# shellcheck disable=SC2016 # a Nix expression, not shell
nix-instantiate --readonly-mode --eval --strict --json -E '
  let
    stub = name: "/nix/store/00000000000000000000000000000000-${name}";
    pkgs = {
      testers.runNixOSTest = test: test;
      runCommand = name: _: _: stub name;
      writeText = name: _: stub name;
    };
    test = import ./nix/vm-test.nix { inherit pkgs; s3backup = stub "s3backup"; };
  in
  {
    nodes = builtins.attrNames test.nodes;
    script = test.testScript { nodes.s3.networking.primaryIPAddress = "192.0.2.1"; };
  }
' >"$tmp/vm-test.json" || die "nix/vm-test.nix does not evaluate"
python3 -c '
import json, sys
test = json.load(open(sys.argv[1]))
open(sys.argv[2], "w").write(test["script"])
print(",".join(["start_all", "subtest"] + test["nodes"]))
' "$tmp/vm-test.json" "$tmp/testScript.py" >"$tmp/builtins"
# The names the NixOS test driver defines, as its own pyflakes run has them
PYFLAKES_BUILTINS=$(cat "$tmp/builtins") pyflakes3 "$tmp/testScript.py" ||
	die "nix/vm-test.nix's test script fails pyflakes"
echo "clean: $(wc -l <"$tmp/testScript.py") lines, nodes $(cat "$tmp/builtins")"

printf '\nnix/check.sh: all checks passed\n'
