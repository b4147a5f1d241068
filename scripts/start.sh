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
# ComfyUI 0.3.75 imports torchaudio in its two core audio node files and reports them as IMPORT FAILED
# without it; torchaudio has no build for this torch (2.14), and newer ComfyUI no longer requires it. The
# lines stay (they are ComfyUI's), each with a note that only those core audio nodes are missing.
AUDIO_NOTE="  <- expected in this set-up: core audio nodes need torchaudio, which has no build for torch 2.14; HS-Diffusion and all other nodes are unaffected"
PIP_NOTE="  <- not for torchaudio here: it would replace torch"
exec > >(sed -u -e "/^IMPORT FAILED: nodes_audio\(_encoder\)\?\.py$/s|\$|$AUDIO_NOTE|" \
  -e "/^Please do a: pip install -r requirements.txt$/s|\$|$PIP_NOTE|") 2>&1
# shellcheck disable=SC2086
exec "$PY" main.py "${DEVICE_ARGS[@]}" --listen 127.0.0.1 --port "${HS_PORT:-8188}" \
  --disable-auto-launch --base-directory "$WORK/base" --database-url "sqlite:///$WORK/base/comfyui.db" \
  --extra-model-paths-config "$WORK/extra_model_paths.yaml" ${HS_COMFY_ARGS:-}
