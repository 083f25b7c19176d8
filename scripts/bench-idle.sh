#!/usr/bin/env bash
# Idle benchmark: one daemon with N local_dir watchers (default 1000) polling every
# 10 s with nothing new to find. Reports the daemon's CPU use (% of one core, from
# /proc/PID/stat user+system time over the measuring window) and memory (VmRSS at
# the end, VmHWM peak), next to a baseline daemon with no watchers measured the same
# way in the same run. The daemons listen for /metrics on a free loopback port; after
# the window one scrape of the 1,000-watcher daemon is timed (with curl, if present),
# and its size per watcher is compared with a third daemon's, the same watchers with
# http.per_watcher_histograms: true (scraped after its warm-up only).
#
# Usage: scripts/bench-idle.sh [WATCHERS] [SECONDS]
#   WATCHERS  watchers in the measured daemon (default 1000)
#   SECONDS   measuring window after the warm-up (default 60)
# Variables: WARMUP (seconds before measuring, default 15: every watcher has done
# its first poll and announced its files), HIGHWATER_BIN (binary to measure; default:
# a release build made first with cargo build --release --locked).
set -euo pipefail
cd "$(dirname "$0")/.."

watchers="${1:-1000}"
seconds="${2:-60}"
warmup="${WARMUP:-15}"
if [ -n "${HIGHWATER_BIN:-}" ]; then
    bin="$HIGHWATER_BIN"
else
    cargo build --release --locked >&2
    bin="$PWD/target/release/highwater"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]+"${pids[@]}"}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# A project with N watchers, each on its own directory holding three small files
# (announced during the warm-up, so the window sees idle polls only).
make_project() {
    local dir="$1" n="$2" http_extra="${3:-}" i name
    mkdir -p "$dir/watchers" "$dir/in" "$dir/out"
    cat > "$dir/highwater.yaml" <<YAML
watchers_dir: $dir/watchers
state: {type: sqlite, path: $dir/state/highwater.db}
defaults: {poll_interval: 10s}
http: {listen: "127.0.0.1:0"$http_extra}
YAML
    for ((i = 1; i <= n; i++)); do
        name="$(printf 'w%04d' "$i")"
        mkdir -p "$dir/in/$name"
        for f in a b c; do echo "$f" > "$dir/in/$name/$f.csv"; done
        cat > "$dir/watchers/$name.yaml" <<YAML
namespace: bench
source: {type: local_dir, path: $dir/in/$name, min_age: 0s}
sink: {type: file, path: $dir/out/events.jsonl}
YAML
    done
}

# user+system clock ticks of a process.
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

status_kb() {
    awk -v key="$2:" '$1 == key {print $2}' "/proc/$1/status"
}

# Starts a daemon on a project, waits, measures. Prints: CPU% RSS_MB HWM_MB EVENTS
# SCRAPE, where SCRAPE is "bytes,seconds" of one GET /metrics after the window.
measure() {
    local dir="$1" pid t0 t1 start end
    HIGHWATER_LOG_FORMAT=json "$bin" --config "$dir/highwater.yaml" run \
        > "$dir/stdout.log" 2> "$dir/daemon.log" &
    pid=$!
    pids+=("$pid")
    sleep "$warmup"
    kill -0 "$pid" || { echo "daemon died; see $dir/daemon.log" >&2; cat "$dir/daemon.log" >&2; exit 1; }
    t0="$(cpu_ticks "$pid")"
    start="$(date +%s.%N)"
    sleep "$seconds"
    t1="$(cpu_ticks "$pid")"
    end="$(date +%s.%N)"
    local rss hwm events hz
    rss="$(status_kb "$pid" VmRSS)"
    hwm="$(status_kb "$pid" VmHWM)"
    events=0
    if [ -f "$dir/out/events.jsonl" ]; then events="$(wc -l < "$dir/out/events.jsonl")"; fi
    hz="$(getconf CLK_TCK)"
    local addr scrape=none
    addr="$(grep -o '"addr":"[^"]*"' "$dir/daemon.log" | head -1 | cut -d'"' -f4)"
    if command -v curl >/dev/null 2>&1 && [ -n "$addr" ]; then
        scrape="$(curl -s -o /dev/null -w '%{size_download},%{time_total}' "http://$addr/metrics")"
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    awk -v d="$((t1 - t0))" -v hz="$hz" -v s="$start" -v e="$end" -v rss="$rss" -v hwm="$hwm" -v ev="$events" \
        -v scrape="$scrape" \
        'BEGIN { printf "%.2f %.1f %.1f %d %s\n", 100 * d / hz / (e - s), rss / 1024, hwm / 1024, ev, scrape }'
}

# Starts a daemon on a project, waits the warm-up, prints the bytes of one GET /metrics.
scrape_only() {
    local dir="$1" pid addr bytes=none
    HIGHWATER_LOG_FORMAT=json "$bin" --config "$dir/highwater.yaml" run \
        > "$dir/stdout.log" 2> "$dir/daemon.log" &
    pid=$!
    pids+=("$pid")
    sleep "$warmup"
    addr="$(grep -o '"addr":"[^"]*"' "$dir/daemon.log" | head -1 | cut -d'"' -f4)"
    if command -v curl >/dev/null 2>&1 && [ -n "$addr" ]; then
        bytes="$(curl -s -o /dev/null -w '%{size_download}' "http://$addr/metrics")"
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$bytes"
}

# Bytes a watcher adds to a scrape: (scrape - baseline scrape) / watchers.
per_watcher() {
    awk -v s="${1%%,*}" -v b="${2%%,*}" -v n="$watchers" \
        'BEGIN { if (s ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && n > 0) printf "%d", (s - b) / n; else print "n/a" }'
}

echo "preparing $watchers watchers in $work" >&2
make_project "$work/base" 0
make_project "$work/many" "$watchers"
make_project "$work/hist" "$watchers" ", per_watcher_histograms: true"

echo "measuring the baseline (0 watchers): ${warmup}s warm-up, ${seconds}s window" >&2
read -r base_cpu base_rss base_hwm _ base_scrape < <(measure "$work/base")
echo "measuring $watchers watchers: ${warmup}s warm-up, ${seconds}s window" >&2
read -r cpu rss hwm events scrape < <(measure "$work/many")
echo "scraping $watchers watchers with per_watcher_histograms: true after ${warmup}s" >&2
hist_scrape="$(scrape_only "$work/hist")"

cat <<REPORT

highwater idle benchmark: $("$bin" --version), $(nproc) CPUs, $(uname -sr)
$watchers local_dir watchers, poll_interval 10s, nothing new; ${seconds}s window after ${warmup}s warm-up

| daemon | CPU (% of one core) | RSS (MB) | peak RSS (MB) |
|---|---|---|---|
| baseline, 0 watchers | $base_cpu | $base_rss | $base_hwm |
| $watchers watchers | $cpu | $rss | $hwm |

events announced during the warm-up: $events (expected $((watchers * 3)))
one GET /metrics after the window (bytes,seconds): $scrape

| /metrics | scrape (bytes) | per watcher (bytes) |
|---|---|---|
| baseline, 0 watchers | ${base_scrape%%,*} | |
| $watchers watchers, per_watcher_histograms: false (default) | ${scrape%%,*} | $(per_watcher "$scrape" "$base_scrape") |
| $watchers watchers, per_watcher_histograms: true | ${hist_scrape} | $(per_watcher "$hist_scrape" "$base_scrape") |

reproduce: scripts/bench-idle.sh $watchers $seconds
REPORT
