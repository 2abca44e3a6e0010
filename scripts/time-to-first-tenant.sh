#!/bin/sh
# Time to first tenant from a fresh clone, as the README walks it: git clone, npm ci (installs the
# pinned Node and builds dist/ through `prepare`), then the first `npx dforge quickstart` (creates
# the tenants acme and globex). Prints the wall-clock seconds of each step; run as root, like the
# quickstart in the README (PostgreSQL runs as the postgres account). Not part of the test suite.
# Usage: scripts/time-to-first-tenant.sh [REPO] [PORT]   (defaults: this clone, 5499)
set -eu
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
port=${2:-5499}
work=$(mktemp -d /tmp/dforge-ttft-XXXXXX)
# The postgres account must traverse the install directory (quickstart checks it).
chmod 755 "$work"
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

t0=$(now)
git clone -q "$repo" "$work/dforge"
t1=$(now)
(cd "$work/dforge" && npm ci --no-audit --no-fund >"$work/npm-ci.log" 2>&1)
t2=$(now)
(cd "$work/dforge" && npx dforge quickstart --dir ./demo --port "$port" >"$work/quickstart.out" 2>"$work/quickstart.err")
t3=$(now)
(cd "$work/dforge" && npx dforge tenant list --dir ./demo)
(cd "$work/dforge" && npx dforge db stop --dir ./demo >/dev/null 2>&1) || true

echo "git clone:          $(secs "$t0" "$t1") s"
echo "npm ci:             $(secs "$t1" "$t2") s"
echo "dforge quickstart:  $(secs "$t2" "$t3") s"
echo "total:              $(secs "$t0" "$t3") s"
echo "(logs in $work; remove it with rm -rf $work)"
