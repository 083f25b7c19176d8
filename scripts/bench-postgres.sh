#!/usr/bin/env bash
# Benchmark of the postgres source: rows per second announced by `highwater run`
# (xid mode, a file sink, timed until the file holds every event) next to two
# baselines in the same run that write the same rows as JSON lines to a file:
# `COPY (SELECT json_build_object(...)) TO STDOUT`, and a bare keyset loop in Python
# with psycopg (installed into a virtualenv under .cache/ once). Then the daemon's
# peak RSS, also in a second run with `batch_size: 100000` (memory per batch row), and
# the cost of an idle poll (queries per poll, store writes).
#
# Usage: scripts/bench-postgres.sh [ROWS] [BATCH_SIZE]     (defaults: 300000 10000)
# Server: HIGHWATER_BENCH_PG_URL, else whatever tests/setup/postgres.sh finds or starts.
# Builds the release binary first (cargo build --release --locked), unless
# HIGHWATER_BENCH_BIN names a binary to run instead (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-300000}"
batch="${2:-10000}"
big_batch=100000

cleanup_cmds=()
cleanup() {
    local cmd
    for cmd in "${cleanup_cmds[@]+"${cleanup_cmds[@]}"}"; do eval "$cmd" || true; done
}
trap cleanup EXIT

if [ -n "${HIGHWATER_BENCH_PG_URL:-}" ]; then
    url="$HIGHWATER_BENCH_PG_URL"
else
    # shellcheck source=/dev/null
    source tests/setup/postgres.sh
    url="$HIGHWATER_TEST_PG_URL"
fi
# A database of its own, so that the server's transaction counter is the daemon's.
admin_url="${url%/*}/postgres"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS highwater_bench" >/dev/null
psql "$admin_url" -qc "CREATE DATABASE highwater_bench" >/dev/null
bench_url="${url%/*}/highwater_bench"
cleanup_cmds+=("psql '$admin_url' -qc 'DROP DATABASE IF EXISTS highwater_bench WITH (FORCE)' >/dev/null")

if [ -n "${HIGHWATER_BENCH_BIN:-}" ]; then
    bin="$(realpath "$HIGHWATER_BENCH_BIN")"
else
    cargo build --release --locked -q
    bin="${CARGO_TARGET_DIR:-$PWD/target}/release/highwater"
fi

# The psycopg baseline's interpreter: a virtualenv of its own, made once.
cache="${HIGHWATER_TEST_CACHE:-$PWD/.cache}"
psycopg_venv="$cache/psycopg-3.2.3"
if ! "$psycopg_venv/bin/python" -c 'import psycopg' 2>/dev/null; then
    echo "== installing psycopg into $psycopg_venv (once)" >&2
    rm -rf "$psycopg_venv"
    python3 -m venv "$psycopg_venv"
    "$psycopg_venv/bin/pip" install --quiet --disable-pip-version-check "psycopg[binary]==3.2.3"
fi

echo "== loading $rows rows (transactions of 10000 rows)" >&2
psql "$bench_url" -q <<SQL
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric(12,2) NOT NULL,
  note text, created_at timestamptz NOT NULL DEFAULT now(),
  hx xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE INDEX ON orders (hx, id);
SQL
for ((done = 0; done < rows; done += 10000)); do
    n=$((rows - done < 10000 ? rows - done : 10000))
    psql "$bench_url" -qc "INSERT INTO orders (customer, amount, note)
        SELECT g % 1000, (g % 100000) / 100.0, 'order ' || g FROM generate_series(1, $n) g"
done
psql "$bench_url" -qc "VACUUM ANALYZE orders"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; } # format, expression

work="$(mktemp -d /tmp/highwater-bench.XXXXXX)"
cleanup_cmds+=("rm -rf '$work'")

echo "== COPY of the same rows as JSON lines, to a file" >&2
t0=$(now)
psql "$bench_url" -qc "COPY (SELECT json_build_object('id', o.id, 'amount', o.amount, 'created_at', o.created_at)
    FROM orders o ORDER BY o.hx, o.id) TO STDOUT" >"$work/copy.jsonl"
sync "$work/copy.jsonl"
t1=$(now)
copy_s=$(calc %.3f "$t1 - $t0")
rm -f "$work/copy.jsonl"

echo "== a bare keyset loop (Python, psycopg, LIMIT $batch), the same rows as JSON lines" >&2
cat >"$work/loop.py" <<'PY'
import json, os, sys
import psycopg
url, batch, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with psycopg.connect(url) as conn, open(out, "w") as f:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, amount::text, created_at FROM orders WHERE id > %s ORDER BY id LIMIT %s",
            (last, batch)).fetchall()
        if not rows:
            break
        for id_, amount, created_at in rows:
            f.write(json.dumps({"id": id_, "amount": amount, "created_at": created_at.isoformat()}))
            f.write("\n")
        last = rows[-1][0]
    f.flush()
    os.fdatasync(f.fileno())
PY
t0=$(now)
"$psycopg_venv/bin/python" "$work/loop.py" "$bench_url" "$batch" "$work/loop.jsonl"
t1=$(now)
loop_s=$(calc %.3f "$t1 - $t0")
rm -f "$work/loop.jsonl"

# One daemon directory per run: a fresh SQLite store, the file sink's output beside it.
setup_run() { # dir batch_size
    mkdir -p "$1/config" "$1/watchers"
    printf 'watchers_dir: watchers\nstate: {type: sqlite, path: state.db}\nshutdown_timeout: 10s\n' >"$1/config/highwater.yaml"
    cat >"$1/watchers/orders.yaml" <<YAML
namespace: bench
name: orders
poll_interval: 1s
batch_size: $2
source:
  type: postgres
  connection: "$bench_url"
  table: public.orders
  cursor: id
  xid_column: hx
  columns: [amount, created_at]
sink: {type: file, path: events.jsonl}
YAML
}
# Waits until the file sink's output holds every row; gives up if the daemon died.
# Counts only the lines appended since the last look: counting the whole file every
# 50 ms read it some twenty times over (100 MB at the end), on the two cores the
# daemon and the server share.
wait_for_rows() { # pid
    local seen=0 counted=0 size
    while [ "$counted" -lt "$rows" ]; do
        kill -0 "$1" 2>/dev/null || { echo "the daemon exited early; its log is in $work" >&2; exit 1; }
        sleep 0.05
        size=$(stat -c %s events.jsonl 2>/dev/null || echo 0)
        if [ "$size" -gt "$seen" ]; then
            counted=$((counted + $(dd if=events.jsonl iflag=skip_bytes,count_bytes skip="$seen" count=$((size - seen)) bs=1M status=none | tr -cd '\n' | wc -c)))
            seen=$size
        fi
    done
}
peak_rss_mb() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
rss_mb() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

echo "== highwater run (batch_size $batch) until $rows events are in the file" >&2
setup_run "$work/run" "$batch"
cd "$work/run"
t0=$(now)
RUST_LOG=highwater=debug HIGHWATER_LOG_FORMAT=json "$bin" run 2>"$work/daemon.log" &
daemon_pid=$!
cleanup_cmds+=("kill $daemon_pid 2>/dev/null")
wait_for_rows "$daemon_pid"
t1=$(now)
run_s=$(calc %.3f "$t1 - $t0")
run_peak=$(peak_rss_mb "$daemon_pid")
# The loop logs how long each poll took: the source's share of the run.
poll_s=$(grep '"Polled."' "$work/daemon.log" | grep -o '"took_ms":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {printf "%.2f", s / 1000}')

echo "== idle: 20 s with no new rows" >&2
sleep 2
polls_before=$(grep -c '"Polled table."' "$work/daemon.log" || true)
state_before=$(cat state.db* | sha256sum)
xact_before=$(psql "$admin_url" -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'highwater_bench'")
sleep 20
polls_after=$(grep -c '"Polled table."' "$work/daemon.log" || true)
state_after=$(cat state.db* | sha256sum)
idle_rss=$(rss_mb "$daemon_pid")
idle_log=$(grep '"Polled table."' "$work/daemon.log" | tail -n $((polls_after - polls_before)))
idle_queries=$(echo "$idle_log" | grep -o '"queries":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}')
kill "$daemon_pid"
wait "$daemon_pid" || true
sleep 1 # the server counts a session's transactions when it ends
xact_after=$(psql "$admin_url" -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'highwater_bench'")
idle_polls=$((polls_after - polls_before))
[ "$state_before" = "$state_after" ] && writes=0 || writes="some (state file changed)"

big_rows=$((rows < big_batch ? rows : big_batch))
echo "== highwater run (batch_size $big_batch): peak RSS" >&2
setup_run "$work/big" "$big_batch"
cd "$work/big"
t0=$(now)
"$bin" run 2>"$work/big.log" &
big_pid=$!
cleanup_cmds+=("kill $big_pid 2>/dev/null")
wait_for_rows "$big_pid"
t1=$(now)
big_s=$(calc %.3f "$t1 - $t0")
big_peak=$(peak_rss_mb "$big_pid")
kill "$big_pid"
wait "$big_pid" || true

cat <<REPORT

postgres source benchmark: $rows rows, batch_size $batch, $(nproc) cores, $(psql "$admin_url" -Atc 'SHOW server_version')
  COPY (SELECT json_build_object(...)) : $(calc %.2f "$copy_s") s  ($(calc %.0f "$rows / $copy_s") rows/s)
  psycopg keyset loop, LIMIT $batch    : $(calc %.2f "$loop_s") s  ($(calc %.0f "$rows / $loop_s") rows/s)
  highwater run, xid mode, file sink   : $(calc %.2f "$run_s") s  ($(calc %.0f "$rows / $run_s") rows/s, including start-up)
    rate / COPY's rate                 : $(calc %.2f "$copy_s / $run_s") (goal >= 0.5)
    rate / the psycopg loop's rate     : $(calc %.2f "$loop_s / $run_s") (goal > 1)
    of which the source's polls        : $poll_s s (at least: the loop logs whole milliseconds)
    peak RSS                           : $run_peak MB; $idle_rss MB when idle afterwards
  highwater run, batch_size $big_batch   : $(calc %.2f "$big_s") s, peak RSS $big_peak MB
    per batch row                      : $(calc %.1f "($big_peak - $idle_rss) * 1024 / $big_rows") KB above the idle RSS (goal <= 2 KB; under 300 MB)
  idle polls in 20 s                   : $idle_polls, queries issued $idle_queries ($(calc %.2f "$idle_queries / ($idle_polls > 0 ? $idle_polls : 1)") per poll)
  server-side transactions             : $((xact_after - xact_before)) in the idle window and shutdown (pg_stat_database)
  store writes while idle              : $writes
Reproduce: scripts/bench-postgres.sh $rows $batch
REPORT
