#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed.
#
# The test suite runs a throwaway PostgreSQL (tests/pgserver.py); it needs the
# server binaries, not a running cluster. Quick and silent-ish when they are
# present; as root, installs the Debian package `postgresql` non-interactively;
# otherwise exits 1 saying what to install. Idempotent.
set -euo pipefail

find_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"; return 0
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"; return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1; then
        dir="$(dirname "$(command -v initdb)")"
        if [[ -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then
            echo "$dir"; return 0
        fi
    fi
    return 1
}

if bindir="$(find_bindir)"; then
    echo "PostgreSQL server binaries: $bindir"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found." >&2
    echo "Install the Debian package 'postgresql' as root:  apt-get install -y postgresql" >&2
    echo "(or set CALLENGINE_TEST_NO_PG=1 to skip the PostgreSQL tests)." >&2
    exit 1
fi

echo "Installing PostgreSQL (Debian package 'postgresql')..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends postgresql

if bindir="$(find_bindir)"; then
    echo "PostgreSQL server binaries: $bindir"
    exit 0
fi
echo "error: installed 'postgresql' but initdb/pg_ctl/postgres are still not found" >&2
exit 1
