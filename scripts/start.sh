#!/usr/bin/env bash
# Set up (idempotent) and start ComfyUI on 127.0.0.1 with this pack loaded and its workflows offered
# as templates. Model files go to $HS_WORK_DIR/base/models/<folder> (see README "Models").
# Environment: HS_PORT (default 8188), HS_WORK_DIR (default <repo>/.work), HS_COMFY_ARGS (extra flags).
# Uses the GPU when there is one, the CPU otherwise.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${HS_WORK_DIR:-$REPO/.work}
"$REPO/scripts/setup.sh"
WORK=$(cd "$WORK" && pwd)
PY="$WORK/venv/bin/python"
DEVICE_ARGS=()
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  DEVICE_ARGS=(--cpu)
fi
cd "$WORK/ComfyUI"
# shellcheck disable=SC2086
exec "$PY" main.py "${DEVICE_ARGS[@]}" --listen 127.0.0.1 --port "${HS_PORT:-8188}" \
  --disable-auto-launch --base-directory "$WORK/base" --database-url "sqlite:///$WORK/base/comfyui.db" \
  --extra-model-paths-config "$WORK/extra_model_paths.yaml" ${HS_COMFY_ARGS:-}
