"""Every template in workflows/ is UI format 0.4, uses registered nodes, and is exactly its API twin.

Each template's API twin lives in tests/e2e/prompts/<name>.api.json and is run through the server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.layout import colorize
from hs_testing import PACK_DIR
from hs_testing.server import error_message
from hs_testing.workflow import ui_to_api

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
    assert ui_to_api(workflow, object_info) == twin


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
