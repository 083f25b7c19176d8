# Sourced by scripts/test.sh: installs moto's standalone server (PyPI `moto[server]`,
# pinned: real S3 and SQS APIs on loopback, and S3 event notifications sent to SQS)
# into a virtualenv under $HIGHWATER_TEST_CACHE once, and exports
# HIGHWATER_TEST_MOTO, the `moto_server` program the notification tests start on a
# loopback port of their own. Nothing is started here: each test binary starts and
# stops its own server. A failed install fails the set-up; tests never skip.

MOTO_VERSION=5.2.5
moto_venv="$HIGHWATER_TEST_CACHE/moto-$MOTO_VERSION"
if [ ! -e "$moto_venv/.installed" ]; then
    echo "moto $MOTO_VERSION: installing into $moto_venv (about a minute)" >&2
    rm -rf "$moto_venv"
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install --quiet --disable-pip-version-check \
        "moto[server,s3,sqs,sns]==$MOTO_VERSION"
    # Written last: an interrupted install is redone next time.
    touch "$moto_venv/.installed"
fi
HIGHWATER_TEST_MOTO="$moto_venv/bin/moto_server"
if [ ! -x "$HIGHWATER_TEST_MOTO" ]; then
    echo "moto $MOTO_VERSION installed no $HIGHWATER_TEST_MOTO" >&2
    return 1
fi
export HIGHWATER_TEST_MOTO
echo "moto: $HIGHWATER_TEST_MOTO ($MOTO_VERSION)" >&2
