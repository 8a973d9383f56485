#!/bin/sh
# Build the wheel of this repository, install it into a fresh virtual environment and show
# that the installed tool works on its own, away from the checkout:
#
#   scripts/install-wheel.sh DEST_VENV
#
# DEST_VENV must not exist yet (or be an empty folder). The runtime dependencies come from
# the package registry pip is configured with, each file checked against the sha256 pinned in
# requirements/runtime.txt (--require-hashes: pip refuses anything else); the wheel is built
# with the setuptools pinned there and installed without an index.
# Then, from an empty temporary folder, DEST_VENV/bin/inventory runs `query --list` (the
# named queries ship in the wheel), `demo` (the bundled simulator, 3 accounts) and the named
# query `monthly_cost` on the demo's store (its price list ships in the wheel too).
# PYTHON (default python3, 3.11+) makes the virtual environment. Exit status: 0 when all of
# it worked, else the failing step's (2 for a bad DEST_VENV).
set -eu

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: scripts/install-wheel.sh DEST_VENV" >&2
    exit 2
fi
dest=$1
if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null || echo x)" ]; then
    echo "error: DEST_VENV $dest exists and is not an empty folder; give a new path" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

step "virtual environment $dest ($python)"
"$python" -m venv "$dest"
dest=$(cd "$dest" && pwd)

pip() { "$dest/bin/python" -m pip --disable-pip-version-check "$@"; }

step "the runtime dependencies, hash-pinned (requirements/runtime.txt)"
pip install --quiet --require-hashes --no-deps -r "$repo/requirements/runtime.txt"

step "building the wheel"
# from a copy of what the wheel is made of, so that the build leaves nothing in the checkout
mkdir "$work/src"
cp -R "$repo/pyproject.toml" "$repo/README.md" "$repo/inventory" "$repo/sql" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/*.whl)
echo "$(basename "$wheel")"

step "installing it (no index: nothing more is downloaded)"
pip install --quiet --no-deps --no-index "$wheel"
pip check

# From here on nothing may come from the checkout: run in an empty folder, with no
# INVENTORY_SQL_DIR, and no AWS settings of the caller (the demo sets its own).
mkdir "$work/run"
cd "$work/run"
unset INVENTORY_SQL_DIR

step "inventory query --list"
"$dest/bin/inventory" query --list --format csv

step "inventory demo"
"$dest/bin/inventory" demo --accounts 3 --latency-ms 5

step "inventory query monthly_cost"
"$dest/bin/inventory" query monthly_cost --db data/demo.duckdb --format csv

step "ok: $dest/bin/inventory works from the wheel"
