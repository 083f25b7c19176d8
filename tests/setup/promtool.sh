# Sourced by scripts/test.sh: promtool, which checks and unit-tests the alert rules in
# contrib/prometheus/ (tests/integration/monitoring.rs). Installs Debian's package
# `prometheus` when promtool is missing (as root, like the rest of the set-up; its
# service is not needed and not started by the tests) and exports
# HIGHWATER_TEST_PROMTOOL.

if ! command -v promtool >/dev/null; then
    echo "installing prometheus (for promtool)" >&2
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >&2
fi
HIGHWATER_TEST_PROMTOOL="$(command -v promtool)"
export HIGHWATER_TEST_PROMTOOL
echo "promtool: $HIGHWATER_TEST_PROMTOOL" >&2
