#!/usr/bin/env bash
# Benchmark of the postgres source: rows per second announced by `highwater run`
# (xid mode, events counted as they leave the stdout sink), next to
# `COPY (SELECT …) TO STDOUT` of the same rows and columns in the same run; then the
# cost of an idle poll (queries per poll, store writes).
#
# Usage: scripts/bench-postgres.sh [ROWS] [BATCH_SIZE]     (defaults: 200000 1000)
# Server: HIGHWATER_BENCH_PG_URL, else whatever tests/setup/postgres.sh finds or starts.
# Builds the release binary first (cargo build --release --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-200000}"
batch="${2:-1000}"

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

cargo build --release --locked -q
bin="$PWD/target/release/highwater"

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

echo "== COPY of the same rows and columns" >&2
t0=$(now)
psql "$bench_url" -qc "COPY (SELECT o.id::text AS k, o.id::text AS c, o.hx::text AS x, o.id, o.amount::text AS amount, o.created_at FROM orders o ORDER BY o.hx, o.id) TO STDOUT" | wc -l >/dev/null
t1=$(now)
copy_s=$(calc %.3f "$t1 - $t0")

work="$(mktemp -d /tmp/highwater-bench.XXXXXX)"
cleanup_cmds+=("rm -rf '$work'")
mkdir -p "$work/config" "$work/watchers"
printf 'watchers_dir: watchers\nstate: {type: sqlite, path: state.db}\nshutdown_timeout: 10s\n' >"$work/config/highwater.yaml"
cat >"$work/watchers/orders.yaml" <<YAML
namespace: bench
name: orders
poll_interval: 1s
batch_size: $batch
source:
  type: postgres
  connection: "$bench_url"
  table: public.orders
  cursor: id
  xid_column: hx
  columns: [amount, created_at]
sink: {type: stdout}
YAML

echo "== highwater run until $rows events are out" >&2
cd "$work"
t0=$(now)
RUST_LOG=highwater=debug HIGHWATER_LOG_FORMAT=json "$bin" run 2>"$work/daemon.log" \
    > >(awk -v out="$work/count" '{n++} n % 5000 == 0 {print n > out; close(out)} END {print n > out; close(out)}') &
daemon_pid=$!
count() { local c; c=$(cat "$work/count" 2>/dev/null || true); echo "${c:-0}"; }
while [ "$(count)" -lt "$rows" ]; do sleep 0.05; done
t1=$(now)
run_s=$(calc %.3f "$t1 - $t0")
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
idle_log=$(grep '"Polled table."' "$work/daemon.log" | tail -n $((polls_after - polls_before)))
idle_queries=$(echo "$idle_log" | grep -o '"queries":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}')
kill "$daemon_pid"
wait "$daemon_pid" || true
sleep 1 # the server counts a session's transactions when it ends
xact_after=$(psql "$admin_url" -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'highwater_bench'")
idle_polls=$((polls_after - polls_before))
[ "$state_before" = "$state_after" ] && writes=0 || writes="some (state file changed)"

cat <<REPORT

postgres source benchmark: $rows rows, batch_size $batch, $(nproc) cores, $(psql "$admin_url" -Atc 'SHOW server_version')
  COPY (SELECT ...) TO STDOUT : $(calc %.2f "$copy_s") s  ($(calc %.0f "$rows / $copy_s") rows/s)
  highwater run, xid mode     : $(calc %.2f "$run_s") s  ($(calc %.0f "$rows / $run_s") rows/s, including start-up)
  ratio highwater / COPY      : $(calc %.1f "$run_s / $copy_s") x the time of COPY
  of which the source's polls : $poll_s s (at least: the loop logs whole milliseconds; the rest is outbox, commit, sink)
  idle polls in 20 s          : $idle_polls, queries issued $idle_queries ($(calc %.2f "$idle_queries / ($idle_polls > 0 ? $idle_polls : 1)") per poll)
  server-side transactions    : $((xact_after - xact_before)) in the idle window and shutdown (pg_stat_database)
  store writes while idle     : $writes
Reproduce: scripts/bench-postgres.sh $rows $batch
REPORT
