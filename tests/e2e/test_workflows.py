"""Every template in workflows/ is UI format 0.4, uses registered nodes, and is exactly its API twin.

Each template's API twin lives in tests/e2e/prompts/<name>.api.json and is run through the server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.layout import colorize
from hs_testing import PACK_DIR
from hs_testing.server import error_message
from hs_testing.workflow import strip_meta, ui_to_api

WORKFLOWS = sorted((PACK_DIR / "workflows").glob("*.json"))
PROMPTS = PACK_DIR / "tests" / "e2e" / "prompts"


def load_twin(name: str) -> dict:
    return json.loads((PROMPTS / f"{name}.api.json").read_text())


def test_every_template_has_an_api_twin():
    assert WORKFLOWS, "workflows/ ships no template"
    for path in WORKFLOWS:
        assert (PROMPTS / f"{path.stem}.api.json").exists(), f"{path.name} has no API twin in {PROMPTS}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_is_its_api_twin(comfy_server, path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    object_info = comfy_server.get("/object_info").json()
    twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in load_twin(path.stem).items()}
    assert strip_meta(ui_to_api(workflow, object_info)) == twin


def test_layout_tools_template_runs(comfy_server):
    from skimage import data

    photo = data.astronaut()[::16, ::16]  # 32×32
    Image.fromarray(photo).save(comfy_server.input_dir / "example.png")
    labels = torch.zeros(1, 32, 32, dtype=torch.int64)
    labels[:, 4:14, 10:22] = CANONICAL.index("face")
    labels[:, 14:18, 13:19] = CANONICAL.index("neck")
    labels[:, 18:, 4:28] = CANONICAL.index("clothes")
    rgb = (colorize(labels, CANONICAL)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(rgb).save(comfy_server.input_dir / "layout.png")
    entry = comfy_server.run(load_twin("headswap_layout_tools"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    head = np.asarray(Image.open(comfy_server.output_files(entry, "5")[0]).convert("L")) > 127
    assert np.array_equal(head, (labels[0] == CANONICAL.index("face")).numpy())
    neck = np.asarray(Image.open(comfy_server.output_files(entry, "7")[0]).convert("L")) > 127
    assert np.array_equal(neck, (labels[0] == CANONICAL.index("neck")).numpy())


def core_templates() -> list:
    """The workflow templates ComfyUI ships (comfyui_workflow_templates*), saved by the real frontend."""
    import importlib.util

    found = []
    for package in ("comfyui_workflow_templates_media_image", "comfyui_workflow_templates_core"):
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                found += sorted((Path(folder) / "templates").glob("*.json"))
    return [p for p in found if p.name != "index.json" and not p.name.startswith("index.")]


def test_converter_reads_the_frontends_own_templates(comfy_server):
    """Every ComfyUI-shipped template whose nodes this server has converts; its links land on declared inputs."""
    from comfyui_hs_diffusion.hs_models.workflow_format import VIRTUAL_NODE_TYPES, WorkflowFormatError

    object_info = comfy_server.get("/object_info").json()
    converted, skipped = 0, []
    for path in core_templates():
        workflow = json.loads(path.read_text())
        if not isinstance(workflow, dict) or "nodes" not in workflow:
            continue
        types = {n["type"] for n in workflow["nodes"]} - VIRTUAL_NODE_TYPES
        if (workflow.get("definitions") or {}).get("subgraphs") or not types <= set(object_info):
            skipped.append(path.name)
            continue
        try:
            prompt = ui_to_api(workflow, object_info)
        except WorkflowFormatError as error:
            raise AssertionError(f"{path.name}: {error}") from error
        for entry in prompt.values():
            info = object_info[entry["class_type"]]
            declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
            assert set(entry["inputs"]) <= set(declared), (path.name, entry)
            for name, value in entry["inputs"].items():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    assert value[0] in prompt, (path.name, name, value)
        converted += 1
    assert converted >= 30, f"only {converted} of ComfyUI's own templates were convertible; skipped {skipped[:10]}"


def test_in_process_object_info_matches_the_server(comfy_server, pack_nodes):
    """nodes/object_info.py gives the converter what a server's /object_info gives it, for V3 and V1 nodes."""
    import nodes as comfy_nodes
    from comfyui_hs_diffusion.nodes.object_info import object_info

    served = comfy_server.get("/object_info").json()
    classes = {**pack_nodes, **{k: comfy_nodes.NODE_CLASS_MAPPINGS[k] for k in ("LoadImage", "KSampler", "SaveImage")}}
    local = object_info(classes, comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS)
    keys = ("input_order", "output", "output_name", "display_name", "output_node")
    for name, info in local.items():
        assert {k: info[k] for k in keys} == {k: served[name][k] for k in keys}, name
        for section in ("required", "optional"):
            if name not in DYNAMIC_FILE_LISTS:
                assert info["input"].get(section) == served[name]["input"].get(section), (name, section)


DYNAMIC_FILE_LISTS = {
    "LoadImage",
    "HeadSwapLoadLayout",
    "HeadSwapDiffusionLoader",
    "HeadSwapParsingModelLoader",
    "HeadSwapLayoutGeneratorLoader",
}
