#!/usr/bin/env bash
# The S3 benchmark: installs SeaweedFS like the tests do (tests/setup/s3.sh), then runs
# `cargo bench --bench s3` (a release build), which starts its own server on loopback,
# puts the objects and prints each row next to its baseline, measured in the same run:
# 20k new keys cold against a bare ListObjectsV2 walk (medians, and each run against
# the walk taken just before it), a backlog in `any` order at batch_size 100 against
# 10000 (LIST requests and time), the CPU of an idle `lexicographic` poll with 100k
# keys remembered, and peak RSS. Then, against moto's
# server (tests/setup/moto.sh), `cargo bench --bench s3_notify`: PUT -> event delivered
# (p50, p95) with S3 notifications through SQS next to listing at the default poll
# interval, both running at once, and SQS requests per idle minute.
#
# Usage: scripts/bench-s3.sh
#   HIGHWATER_BENCH_COLD=N         keys of the cold row (default 20000)
#   HIGHWATER_BENCH_BACKLOG=N      keys of the larger backlog row (default 100000)
#   HIGHWATER_BENCH_REMEMBERED=N   keys remembered by the idle row (default 100000)
#   HIGHWATER_BENCH_RUNS=N         runs behind each median (default 5)
#   HIGHWATER_BENCH_PUTS=N         PUTs of the notification row (default 40)
#   HIGHWATER_BENCH_ONLY=s3|s3_notify   one of the two
#   HIGHWATER_BENCH_BIN=PATH       the s3 rows run this highwater binary instead of
#                                  the one built (to compare two builds)
# About 8 minutes on 2 cores, most of it putting 120,000 objects.
set -euo pipefail
cd "$(dirname "$0")/.."
export HIGHWATER_TEST_CACHE="${HIGHWATER_TEST_CACHE:-$PWD/.cache}"
mkdir -p "$HIGHWATER_TEST_CACHE"
only="${HIGHWATER_BENCH_ONLY:-}"
# shellcheck source=/dev/null
source tests/setup/s3.sh
# shellcheck source=/dev/null
source tests/setup/moto.sh
if [ -z "$only" ] || [ "$only" = s3 ]; then
    cargo bench --locked --bench s3
fi
if [ -z "$only" ] || [ "$only" = s3_notify ]; then
    cargo bench --locked --bench s3_notify
fi
