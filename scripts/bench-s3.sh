#!/usr/bin/env bash
# The S3 benchmark: installs SeaweedFS like the tests do (tests/setup/s3.sh), then runs
# `cargo bench --bench s3` (a release build), which starts its own server on loopback,
# puts HIGHWATER_BENCH_OBJECTS objects (default 100000) and prints its report.
#
# Usage: scripts/bench-s3.sh
#   HIGHWATER_BENCH_OBJECTS=N      objects to put (default 100000; ~1,000 PUT/s on 2 cores)
#   HIGHWATER_BENCH_BATCH=N        the watchers' batch_size (default 10000)
#   HIGHWATER_BENCH_MODES=a,b      only these set-ups: any, lexicographic, lexicographic-10k
#   e.g. a million keys in ordered mode:
#   HIGHWATER_BENCH_OBJECTS=1000000 HIGHWATER_BENCH_MODES=lexicographic,lexicographic-10k scripts/bench-s3.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HIGHWATER_TEST_CACHE="${HIGHWATER_TEST_CACHE:-$PWD/.cache}"
mkdir -p "$HIGHWATER_TEST_CACHE"
# shellcheck source=/dev/null
source tests/setup/s3.sh
cargo bench --locked --bench s3
