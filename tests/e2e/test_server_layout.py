"""The pack inside a real ComfyUI server: registration, templates, and the layout nodes via POST /prompt."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import colorize
from hs_testing.server import PACK_FOLDER_NAME, error_message


def test_pack_imports_and_every_node_is_registered(comfy_server, pack_nodes):
    log = comfy_server.log()
    failures = [line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line)]
    assert not [line for line in failures if PACK_FOLDER_NAME in line], log[-3000:]
    assert "Error while calling comfy_entrypoint" not in log, log[-3000:]
    assert any(PACK_FOLDER_NAME in line for line in log.splitlines() if "seconds" in line), (
        "pack not in the import table"
    )
    info = comfy_server.get("/object_info").json()
    for node_id in pack_nodes:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["python_module"].startswith("custom_nodes"), info[node_id]["python_module"]


def test_workflows_are_offered_as_templates(comfy_server):
    templates = comfy_server.get("/workflow_templates").json()
    names = templates.get(PACK_FOLDER_NAME, [])
    shipped = sorted(
        p.stem for p in (comfy_server.base_dir / ".." / "packs" / PACK_FOLDER_NAME / "workflows").glob("*.json")
    )
    assert sorted(names) == shipped
    for name in names:
        response = comfy_server.get(f"/api/workflow_templates/{PACK_FOLDER_NAME}/{name}.json")
        assert response.status_code == 200
        assert json.loads(response.text)["version"] == 0.4


def _layout_png(server, name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, CANONICAL.num_classes, (1, 24, 32), generator=g)
    labels[:, :2, :5] = UNKNOWN
    rgb = (colorize(labels, CANONICAL)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(rgb).save(server.input_dir / name)
    return labels[0]


def test_layout_nodes_round_trip_through_the_server(comfy_server):
    labels = _layout_png(comfy_server, "e2e_layout.png")
    prompt = {
        "1": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "e2e_layout.png", "label_set": "canonical8", "decode": "auto"}},
        "2": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["1", 0], "opacity": 0.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e2e_preview"}},
        "4": {"class_type": "HeadSwapLayoutToMask", "inputs": {"layout": ["1", 0], "classes": "hair, face, hat"}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "e2e_mask"}},
    }  # fmt: skip
    entry = comfy_server.run(prompt)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    preview = np.asarray(Image.open(comfy_server.output_files(entry, "3")[0]).convert("RGB"))
    expected = (colorize(labels[None], CANONICAL)[0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(preview, expected)
    mask = np.asarray(Image.open(comfy_server.output_files(entry, "6")[0]).convert("L")) > 127
    assert np.array_equal(mask, np.isin(labels.numpy(), [1, 2, 5]))
    # The layout node also shows its own preview in the UI.
    assert entry["outputs"]["2"]["images"]


def test_bad_layout_gives_a_clear_error_and_the_server_keeps_serving(comfy_server):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[2, 2] = (7, 7, 7)
    Image.fromarray(rgb).save(comfy_server.input_dir / "e2e_bad.png")
    bad = {
        "1": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "e2e_bad.png", "label_set": "paper5", "decode": "auto"}},
        "2": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["1", 0], "opacity": 0.5}},
    }  # fmt: skip
    entry = comfy_server.run(bad)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "(7, 7, 7)" in message and "paper5" in message, message
    _layout_png(comfy_server, "e2e_after_error.png")
    good = {
        "1": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "e2e_after_error.png", "label_set": "canonical8", "decode": "auto"}},
        "2": {"class_type": "HeadSwapLayoutPreview", "inputs": {"layout": ["1", 0], "opacity": 0.5}},
    }  # fmt: skip
    assert comfy_server.run(good)["status"]["status_str"] == "success"
    missing = comfy_server.queue({**good, "1": {**good["1"], "inputs": {**good["1"]["inputs"], "image": "nope.png"}}})
    assert missing.status_code == 400 and "nope.png" in missing.text
    assert comfy_server.alive()
