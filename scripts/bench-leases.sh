#!/usr/bin/env bash
# Lease benchmark: N local_dir watchers (default 1000) shared by highwater instances
# over one Postgres store (`state: {type: postgres}`, a schema of its own, dropped at
# the end). Times four moves of the leases, polling `<schema>.leases` every 0.2 s:
#   1. spread: 3 instances started at once, until every lease is live (expires_at >
#      now()) and the per-instance counts have not changed for SETTLE seconds (every
#      hand-over done); the time reported is when the final counts were first seen;
#   2. join: 2 instances settled, a 3rd started, until settled again with each of the
#      3 holding at least one lease;
#   3. failover: one instance killed with SIGKILL, until every lease is live and none is
#      the dead instance's, next to lease_ttl (expected: about the ttl, plus up to a
#      round, 1 s, plus the time to take its leases, a hundred to a statement);
#   4. graceful: one of the 2 left stopped with SIGTERM (it releases its leases at
#      once), until every lease is live and the survivor's.
# Spread and join are compared with the hand-over bound: an instance hands over at most
# 50 leases per round (1 s), so the leases the busiest instance handed over (counted
# from its log) take at least that many / 50 seconds.
#
# Usage: scripts/bench-leases.sh [WATCHERS]
#   WATCHERS  watchers, each defined on every instance (default 1000)
# Variables: HIGHWATER_BENCH_PG_URL (server; default postgres://postgres@127.0.0.1:5432/test,
# trust auth), LEASE_TTL (the store's lease_ttl, default 15s), SETTLE (seconds the counts
# must stay the same, default 3), STEP_TIMEOUT (seconds a step may take, default 300),
# HIGHWATER_BIN (binary to measure; default: a release build made first with
# cargo build --release --locked), LOGS (a directory to copy the instances' logs into
# at the end; the work directory is removed).
set -euo pipefail
cd "$(dirname "$0")/.."

watchers="${1:-1000}"
url="${HIGHWATER_BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
ttl="${LEASE_TTL:-15s}"
settle="${SETTLE:-3}"
step_timeout="${STEP_TIMEOUT:-300}"
if [ -n "${HIGHWATER_BIN:-}" ]; then
    bin="$HIGHWATER_BIN"
else
    cargo build --release --locked >&2
    bin="$PWD/target/release/highwater"
fi
version="$("$bin" --version)"
reproduce="HIGHWATER_BENCH_PG_URL='$url' LEASE_TTL=$ttl${HIGHWATER_BIN:+ HIGHWATER_BIN=$HIGHWATER_BIN} scripts/bench-leases.sh $watchers"
echo "reproduce: $reproduce   ($version)"

schema="highwater_bench_leases_$$"
work="$(mktemp -d)"
declare -A pid_of=()
cleanup() {
    local name pid
    for name in "${!pid_of[@]}"; do
        pid="${pid_of[$name]}"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${LOGS:-}" ]; then mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS"/ 2>/dev/null || true; fi
    psql "$url" -qAtc "DROP SCHEMA IF EXISTS \"$schema\" CASCADE" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

sql() {
    psql "$url" -qAtc "$1"
}

sql "SELECT 1" >/dev/null || { echo "cannot reach $url" >&2; exit 1; }

# The daemon file and N watchers, each on an empty directory of its own; every instance
# reads the same files, its sink named after $INSTANCE.
echo "preparing $watchers watchers in $work, schema $schema, lease_ttl $ttl" >&2
mkdir -p "$work/watchers" "$work/in"
cat > "$work/highwater.yaml" <<YAML
watchers_dir: $work/watchers
state: {type: postgres, connection: "$url", sslmode: disable, schema: $schema, lease_ttl: $ttl}
shutdown_timeout: 5s
YAML
for ((i = 1; i <= watchers; i++)); do
    name="$(printf 'w%04d' "$i")"
    mkdir -p "$work/in/$name"
    cat > "$work/watchers/$name.yaml" <<YAML
namespace: bench
name: $name
source: {type: local_dir, path: $work/in/$name, min_age: 0s}
sink: {type: file, path: $work/out-\${INSTANCE}.jsonl}
poll_interval: 30s
YAML
done
INSTANCE=check "$bin" check -c "$work/highwater.yaml" >/dev/null

now() {
    date +%s.%N
}

# Seconds from $1 to $2, two decimals.
elapsed() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'
}

start_instance() {
    local name="$1"
    INSTANCE="$name" HIGHWATER_LOG_FORMAT=json "$bin" run -c "$work/highwater.yaml" \
        > "$work/$name.stdout.log" 2>> "$work/$name.log" &
    pid_of[$name]=$!
}

stop_instance() {
    local name="$1" signal="$2"
    kill "-$signal" "${pid_of[$name]}"
    wait "${pid_of[$name]}" 2>/dev/null || true
    unset "pid_of[$name]"
}

# The instance names (a, b, c) of the running instances, by their ids in the store.
declare -A name_of=()
learn_ids() {
    local name id
    for name in "${!pid_of[@]}"; do
        id="$(sql "SELECT id FROM \"$schema\".instances WHERE pid = ${pid_of[$name]} ORDER BY started_at DESC LIMIT 1" 2>/dev/null || true)"
        [ -n "$id" ] && name_of[$id]="$name"
    done
    return 0
}

# One look at the leases: sets live (how many are live) and counts (owner=n,... over
# the live ones, owners by instance name once known, else by id, sorted).
sample() {
    local rows owner n label
    live=0
    counts=""
    rows="$(sql "SELECT owner, count(*) FROM \"$schema\".leases WHERE namespace = 'bench' AND expires_at > now() GROUP BY owner" 2>/dev/null || true)"
    while IFS='|' read -r owner n; do
        [ -n "$owner" ] || continue
        label="${name_of[$owner]:-}"
        if [ -z "$label" ]; then
            learn_ids
            label="${name_of[$owner]:-$owner}"
        fi
        live=$((live + n))
        counts+="$label=$n "
    done <<< "$rows"
    counts="$(tr ' ' '\n' <<< "$counts" | sed '/^$/d' | sort | paste -sd, -)"
    counts="${counts:--}"
}

# Waits until every lease is live, held only by the instances named in $2 (each at least
# once), with the per-instance counts unchanged for SETTLE s ($3 = 0: no stability
# needed). Sets settled_at (when the final counts were first seen) and settled_counts.
wait_settled() {
    local t0="$1" holders="$2" stable="$3" first="" last="" t ok h
    while :; do
        t="$(now)"
        sample
        ok=0
        if [ "$live" -eq "$watchers" ]; then
            ok=1
            for h in ${counts//,/ }; do
                [[ " $holders " == *" ${h%%=*} "* ]] || ok=0
            done
            for h in $holders; do
                [[ ",$counts" == *",$h="* ]] || ok=0
            done
        fi
        if [ "$ok" = 1 ] && [ "$counts" = "$last" ]; then
            if awk -v a="$first" -v b="$t" -v s="$stable" 'BEGIN { exit !(b - a >= s) }'; then
                settled_at="$first"
                settled_counts="$counts"
                return 0
            fi
        elif [ "$ok" = 1 ]; then
            first="$t"
            last="$counts"
            if [ "$stable" = 0 ]; then
                settled_at="$first"
                settled_counts="$counts"
                return 0
            fi
        else
            first=""
            last=""
        fi
        if awk -v a="$t0" -v b="$t" -v s="$step_timeout" 'BEGIN { exit !(b - a > s) }'; then
            echo "not settled after ${step_timeout}s: live $live of $watchers, counts $counts (holders: $holders)" >&2
            for h in "${!pid_of[@]}"; do tail -n 5 "$work/$h.log" >&2; done
            exit 1
        fi
        sleep 0.2
    done
}

# "min/max" of the counts in owner=n,... form.
min_max() {
    tr ',' '\n' <<< "$1" | cut -d= -f2 | sort -n | awk 'NR == 1 { min = $1 } { max = $1 } END { printf "%d/%d", min, max }'
}

handed_over() {
    local n
    n="$(grep -c '"handed over"' "$work/$1.log" 2>/dev/null || true)"
    echo "${n:-0}"
}

# The hand-over bound of a step: the leases the busiest instance released while it ran
# (from the logs, counts before the step in $1 as name=n,...), over 50 per second.
bound() {
    local before="$1" name n was max=0 total=0
    for name in a b c; do
        n="$(handed_over "$name")"
        was="$(tr ',' '\n' <<< "$before" | awk -F= -v k="$name" '$1 == k { print $2 }')"
        n=$((n - ${was:-0}))
        total=$((total + n))
        [ "$n" -gt "$max" ] && max=$n
    done
    echo "$total handed over, at most $max by one instance: >= $(((max + 49) / 50)) s at 50/instance/s"
}

handed_counts() {
    local name out=""
    for name in a b c; do out+="$name=$(handed_over "$name"),"; done
    echo "${out%,}"
}

# 1. spread: three instances at once.
echo "1. spread: starting instances a, b, c at once" >&2
before="$(handed_counts)"
t0="$(now)"
start_instance a
start_instance b
start_instance c
wait_settled "$t0" "a b c" "$settle"
spread_time="$(elapsed "$t0" "$settled_at")"
spread_counts="$settled_counts"
spread_bound="$(bound "$before")"
echo "   settled after ${spread_time}s: $spread_counts; $spread_bound" >&2

# 2. join: two settled instances, then a third.
echo "2. join: stopping all, starting a and b, then c once they have settled" >&2
for name in a b c; do stop_instance "$name" TERM; done
mv "$work/a.log" "$work/a.spread.log"
mv "$work/b.log" "$work/b.spread.log"
mv "$work/c.log" "$work/c.spread.log"
name_of=()
t0="$(now)"
start_instance a
start_instance b
wait_settled "$t0" "a b" "$settle"
two_time="$(elapsed "$t0" "$settled_at")"
two_counts="$settled_counts"
echo "   a and b settled after ${two_time}s: $two_counts" >&2
before="$(handed_counts)"
t0="$(now)"
start_instance c
wait_settled "$t0" "a b c" "$settle"
join_time="$(elapsed "$t0" "$settled_at")"
join_counts="$settled_counts"
join_bound="$(bound "$before")"
echo "   settled after ${join_time}s: $join_counts; $join_bound" >&2

# 3. failover: SIGKILL one; its leases expire after the ttl by the server's clock.
echo "3. failover: kill -9 c" >&2
t0="$(now)"
stop_instance c KILL
wait_settled "$t0" "a b" 0
failover_time="$(elapsed "$t0" "$settled_at")"
failover_counts="$settled_counts"
echo "   every lease live on a and b after ${failover_time}s: $failover_counts" >&2

# 4. graceful: SIGTERM one of the two; it releases its leases as it stops.
echo "4. graceful: SIGTERM b" >&2
t0="$(now)"
kill -TERM "${pid_of[b]}"
wait_settled "$t0" "a" 0
graceful_time="$(elapsed "$t0" "$settled_at")"
graceful_counts="$settled_counts"
wait "${pid_of[b]}" 2>/dev/null || true
exited="$(elapsed "$t0" "$(now)")"
unset "pid_of[b]"
echo "   every lease live on a after ${graceful_time}s (b exited by ${exited}s): $graceful_counts" >&2
stop_instance a TERM

problems="$(cat "$work"/*.log | grep -cE '"level":"(WARN|ERROR)"' || true)"
if [ "$problems" -gt 0 ]; then
    echo "warnings and errors in the instances' logs ($problems), by level and message:" >&2
    cat "$work"/*.log | grep -E '"level":"(WARN|ERROR)"' \
        | sed -E 's/.*"level":"([A-Z]+)".*"message":"([^"]*)".*/\1 \2/' | sort | uniq -c | sort -rn | head >&2
fi

cat <<REPORT

highwater lease benchmark: $version, $(nproc) CPUs, $(uname -sr), PostgreSQL $(sql "SHOW server_version")
$watchers local_dir watchers (poll_interval 30s, nothing to find), lease_ttl $ttl, leases polled every 0.2 s;
settled = every lease live and the per-instance counts unchanged for ${settle} s (time: when first seen)

| step | time | baseline |
|---|---|---|
| spread: 3 instances started at once (leases min/max $(min_max "$spread_counts")) | ${spread_time} s | $spread_bound |
| join: a 3rd instance joins 2 settled ones (min/max $(min_max "$join_counts")) | ${join_time} s | $join_bound |
| failover: kill -9 of one of 3 | ${failover_time} s | lease_ttl $ttl (+ up to a round, 1 s) |
| graceful: SIGTERM of one of 2 | ${graceful_time} s | released at once; taken at the survivor's next round (1 s) |

counts: spread $spread_counts; 2 instances $two_counts (settled after ${two_time} s); join $join_counts;
after failover $failover_counts; after the graceful stop $graceful_counts
warnings and errors in the instances' logs: $problems

reproduce: $reproduce
REPORT
