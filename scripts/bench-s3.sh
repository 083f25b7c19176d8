#!/usr/bin/env bash
# The S3 benchmark: installs SeaweedFS like the tests do (tests/setup/s3.sh), then runs
# `cargo bench --bench s3` (a release build), which starts its own server on loopback,
# puts HIGHWATER_BENCH_OBJECTS objects (default 100000) and prints its report.
#
# Usage: scripts/bench-s3.sh    (HIGHWATER_BENCH_OBJECTS=1000000 for a million keys)
set -euo pipefail
cd "$(dirname "$0")/.."
export HIGHWATER_TEST_CACHE="${HIGHWATER_TEST_CACHE:-$PWD/.cache}"
mkdir -p "$HIGHWATER_TEST_CACHE"
# shellcheck source=/dev/null
source tests/setup/s3.sh
cargo bench --locked --bench s3
