#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then every test tier (unit, nodes, e2e) on CPU.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m unit` or `scripts/test.sh -k layout`.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${HS_WORK_DIR:-$REPO/.work}
"$REPO/scripts/setup.sh"
WORK=$(cd "$WORK" && pwd)  # setup.sh made it; absolute, since the tests run from the repository
PY="$WORK/venv/bin/python"
cd "$REPO"
echo "[test] ruff check"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
echo "[test] pytest"
set +e
COMFYUI_DIR="$WORK/ComfyUI" HS_WORK_DIR="$WORK" "$PY" -m pytest -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "[test] pytest collected no tests: treated as a failure" >&2
  exit 1
fi
exit "$status"
