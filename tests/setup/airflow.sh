# Sourced by scripts/test.sh: installs Apache Airflow 3.3.2 into a virtualenv under
# $HIGHWATER_TEST_CACHE (once; about 40 s and 290 MB) and exports
# HIGHWATER_TEST_AIRFLOW_VENV for the end-to-end test in tests/integration/airflow.rs,
# which starts and stops its own Airflow (tests/airflow/start.sh).
#
# The install is pinned by tests/setup/airflow-constraints.txt; a changed constraints
# file reinstalls.

airflow_setup() {
    local version=3.3.2
    local constraints="$PWD/tests/setup/airflow-constraints.txt"
    local venv="$HIGHWATER_TEST_CACHE/airflow-$version"
    local stamp
    stamp="$(python3 --version 2>&1) $(sha256sum "$constraints" | cut -d' ' -f1)"
    if [ -x "$venv/bin/airflow" ] && [ "$(cat "$venv/.installed" 2>/dev/null)" = "$stamp" ]; then
        echo "airflow $version: using $venv" >&2
    else
        echo "airflow $version: installing into $venv (about 40 s)" >&2
        case "$(python3 --version 2>&1)" in
            "Python 3.11."*) ;;
            *) echo "warning: the constraints were resolved on Python 3.11; pip may refuse some pins" >&2 ;;
        esac
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "apache-airflow==$version" --constraint "$constraints"
        # Written last: an interrupted install is redone next time.
        echo "$stamp" > "$venv/.installed"
    fi
    export HIGHWATER_TEST_AIRFLOW_VENV="$venv"
}
airflow_setup
