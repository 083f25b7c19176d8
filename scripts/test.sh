#!/usr/bin/env bash
# Runs the whole test suite with everything it needs: each tests/setup/*.sh script
# installs (into .cache/, once) and starts or locates one real server, and exports
# the variables the integration tests read. Then: cargo test.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

export HIGHWATER_TEST_CACHE="${HIGHWATER_TEST_CACHE:-$PWD/.cache}"
mkdir -p "$HIGHWATER_TEST_CACHE"

# Servers started by the set-up scripts register their stop commands here.
cleanup_cmds=()
cleanup() {
    local cmd
    for cmd in "${cleanup_cmds[@]+"${cleanup_cmds[@]}"}"; do
        eval "$cmd" || true
    done
}
trap cleanup EXIT

for setup in tests/setup/*.sh; do
    [ -e "$setup" ] || continue
    echo "== set-up: $setup" >&2
    # shellcheck source=/dev/null
    source "$setup"
done

echo "== cargo test" >&2
cargo test --locked "$@"
