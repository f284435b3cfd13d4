#!/usr/bin/env bash
# hardseg's two entry points. Each one does all set-up on a fresh machine:
#   ./run.sh demo   train on the embedded defaults (local Ray, MLflow in ./mlruns/mlflow.db, synthetic data)
#   ./run.sh test   run the test suite
# A virtual environment is made in .venv/ and reused while pyproject.toml and
# constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}

setup() {
    local stamp_src stamp
    stamp_src=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
    stamp=$VENV/.hardseg-setup-$stamp_src
    if [ ! -x "$VENV/bin/python" ]; then
        echo "[setup] creating $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ]; then
        echo "[setup] installing hardseg and its dependencies into .venv (first run: a few minutes)" >&2
        if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
               && "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"; } >"$VENV/setup.log" 2>&1; then
            grep -v "is ignored: it is neither a file nor a directory" "$VENV/setup.log" | tail -n 20 >&2
            echo "[setup] ERROR: pip install failed (full log: .venv/setup.log)" >&2
            exit 1
        fi
        rm -f "$VENV"/.hardseg-setup-*
        touch "$stamp"
    fi
    if ! "$VENV/bin/python" -c "import torch, torchvision, torchvision.ops" 2>/tmp/hardseg-tv-check.$$; then
        echo "[setup] ERROR: 'import torchvision' fails in .venv:" >&2
        tail -n 1 /tmp/hardseg-tv-check.$$ >&2
        echo "[setup] fix: torch and torchvision must be a matching pair; reinstall them with" >&2
        echo "        .venv/bin/pip install --force-reinstall -c constraints.txt torch torchvision" >&2
        echo "        (or delete .venv/ and rerun this command)" >&2
        rm -f /tmp/hardseg-tv-check.$$ "$stamp"
        exit 1
    fi
    rm -f /tmp/hardseg-tv-check.$$
    # hardseg's own modules as bytecode (pip compiles the installed packages, not an editable install's sources:
    # with PYTHONDONTWRITEBYTECODE set, as on our machines, every process that imports them compiles them again,
    # ~0.1 s a process); Python recompiles a file whose source changed since
    "$VENV/bin/python" -m compileall -q src >/dev/null 2>&1 || true
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        setup
        exec "$VENV/bin/hardseg" demo "$@"
        ;;
    test)
        setup
        set +e
        "$VENV/bin/python" -m pytest "$@"
        rc=$?
        # pytest exits 5 when a selection ran no test; that is not a pass.
        exit $rc
        ;;
    *)
        echo "usage: ./run.sh demo [ARGS...] | ./run.sh test [PYTEST ARGS...]" >&2
        exit 2
        ;;
esac
