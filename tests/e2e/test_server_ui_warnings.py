"""Warnings reach the user through the real server: in the node's /history outputs, with the frontend extension
that renders them served by ComfyUI."""

from __future__ import annotations

from PIL import Image

from hs_testing.layouts import astronaut, grace_hopper, palette_png

ALIGN = {"mode": "auto", "scale_min": 0.5, "scale_max": 2.0, "max_rotation": 0.0, "scale_nudge": 1.0, "offset_x": 0}  # fmt: skip


def _neck_align_prompt(server, offset_y: int) -> dict:
    """The real photos through Neck Align, its report shown by core Preview as Text."""
    (head, head_labels), (_, body_labels) = grace_hopper(), astronaut()
    Image.fromarray(head).save(server.input_dir / "warn_head.png")
    Image.fromarray(palette_png(head_labels)).save(server.input_dir / "warn_head_layout.png")
    Image.fromarray(palette_png(body_labels)).save(server.input_dir / "warn_body_layout.png")
    load_layout = {"label_set": "canonical8", "decode": "auto"}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "warn_head.png"}},
        "3": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "warn_head_layout.png", **load_layout}},
        "4": {"class_type": "HeadSwapLoadLayout", "inputs": {"image": "warn_body_layout.png", **load_layout}},
        "5": {"class_type": "HeadSwapNeckAlign", "inputs": {"head_image": ["1", 0], "head_layout": ["3", 0], "body_layout": ["4", 0], "offset_y": offset_y, **ALIGN}},
        "20": {"class_type": "PreviewAny", "inputs": {"source": ["5", 4]}},
    }  # fmt: skip


def test_a_face_moved_back_onto_the_canvas_is_in_the_nodes_history_outputs(comfy_server):
    prompt = _neck_align_prompt(comfy_server, offset_y=-900)  # pushes the face off the top of the body photo
    entry = comfy_server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    messages = entry["outputs"]["5"]["hs_warnings"]
    assert any("the aligned face would leave the" in m and "moved by" in m for m in messages), messages
    assert "to keep the face on the canvas" in entry["outputs"]["20"]["text"][0]
    # without the push the same node reports nothing on its UI
    prompt["5"]["inputs"]["offset_y"] = 0
    entry = comfy_server.run(prompt, timeout=300)
    assert entry["status"]["status_str"] == "success" and "5" not in entry["outputs"]


def test_the_frontend_extension_that_renders_the_warnings_is_served(comfy_server):
    scripts = comfy_server.get("/extensions").json()
    ours = [s for s in scripts if s.endswith("/hs_warnings.js")]
    assert len(ours) == 1, scripts  # registered once (WEB_DIRECTORY only, not twice via pyproject)
    source = comfy_server.get(ours[0]).text
    assert "hs_warnings" in source and "registerExtension" in source
