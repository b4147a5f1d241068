"""Test plumbing shared by every tier.

* The pack is imported as the package ``comfyui_hs_diffusion`` (the repository folder may have any name).
* ``unit`` tests need no ComfyUI. ``nodes`` tests run our nodes in-process inside the real ComfyUI
  (COMFYUI_DIR, CPU). ``e2e`` tests start a real ComfyUI server on a free loopback port.
* Markers are set from the folder a test lives in.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_hs_diffusion"
FIXTURES_DIR = (PACK_DIR / ".." / "shared" / "fixtures").resolve()


def _find_comfyui() -> Path | None:
    candidates = [os.environ.get("COMFYUI_DIR")]
    candidates.append(os.path.join(os.environ.get("HS_WORK_DIR", PACK_DIR / ".work"), "ComfyUI"))
    for candidate in candidates:
        if candidate and (Path(candidate) / "comfy").is_dir():
            return Path(candidate).resolve()
    if os.environ.get("COMFYUI_DIR"):
        raise RuntimeError(f"COMFYUI_DIR={os.environ['COMFYUI_DIR']} does not contain a ComfyUI tree")
    return None


COMFYUI_DIR = _find_comfyui()

if COMFYUI_DIR is not None:
    # First on sys.path: `import nodes` must be ComfyUI's nodes.py, never the pack's nodes/ package.
    sys.path.insert(0, str(COMFYUI_DIR))
    from comfy.cli_args import args

    args.cpu = True  # before anything imports comfy.model_management (device state is computed at import)


def _load_pack() -> None:
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, PACK_DIR / "__init__.py", submodule_search_locations=[str(PACK_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)


_load_pack()
sys.path.append(str(PACK_DIR / "tests"))  # shared test helpers: the hs_testing package

from hs_testing.server import ComfyServer, start_server  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(PACK_DIR / "tests").parts[0]
        if tier in ("unit", "nodes", "e2e", "gpu"):
            item.add_marker(getattr(pytest.mark, tier))
        if tier in ("nodes", "e2e") and COMFYUI_DIR is None:
            item.add_marker(pytest.mark.skip(reason="ComfyUI not found: set COMFYUI_DIR or run scripts/setup.sh"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES_DIR.is_dir():
        pytest.skip(f"parity fixtures not found at {FIXTURES_DIR}")
    return FIXTURES_DIR


# --------------------------------------------------------------------------------------------
# nodes tier: our nodes in-process inside the real ComfyUI
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    """Point ComfyUI's input/output/temp and our model folders at a temporary tree."""
    import folder_paths

    root = tmp_path_factory.mktemp("comfy")
    dirs = {name: root / name for name in ("input", "output", "temp", "models")}
    for path in dirs.values():
        path.mkdir()
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))
    pack = importlib.import_module(f"{PACK_NAME}.nodes")
    from comfyui_hs_diffusion.nodes.folders import MODEL_FOLDERS

    for name in MODEL_FOLDERS:
        path = dirs["models"] / name
        path.mkdir()
        folder_paths.add_model_folder_path(name, str(path), is_default=True)
    assert pack.NODES
    return dirs


@pytest.fixture(scope="session")
def pack_nodes(comfy_dirs):
    """The pack's node classes by node id (imported in-process; model folders point at a temp tree)."""
    pack = importlib.import_module(f"{PACK_NAME}.nodes")
    return {node.GET_SCHEMA().node_id: node for node in pack.NODES}


# --------------------------------------------------------------------------------------------
# e2e tier: a real ComfyUI server on a free loopback port
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    if COMFYUI_DIR is None:
        pytest.skip("ComfyUI not found: set COMFYUI_DIR or run scripts/setup.sh")
    server: ComfyServer = start_server(COMFYUI_DIR, PACK_DIR, tmp_path_factory.mktemp("server"))
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# semantic-mixing LDM: the tiny fixture checkpoint converted once per session
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_ldm(fixtures_dir, tmp_path_factory) -> dict[str, Path]:
    """ldm_tiny.ckpt converted by scripts/convert_ldm.py: EMA weights in float32 and live weights in float16."""
    from hs_testing.ldm import convert_tiny

    folder = tmp_path_factory.mktemp("tiny_ldm")
    return {
        "ema": convert_tiny(fixtures_dir, folder / "tiny_ema.safetensors"),
        "live_fp16": convert_tiny(fixtures_dir, folder / "tiny_live_fp16.safetensors", "--weights", "live", "--fp16"),
    }


# --------------------------------------------------------------------------------------------
# layout generator: a tiny one trained briefly through the training command line, once per session
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_layout_generator(tmp_path_factory) -> Path:
    """model.safetensors exported by `python -m hs_training generator` after a few steps on procedural layouts."""
    from hs_testing.layout_generator import train_tiny_generator

    return train_tiny_generator(tmp_path_factory.mktemp("layout_generator"))
