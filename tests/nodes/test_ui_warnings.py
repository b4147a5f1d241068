"""Warnings that change the result reach the node's UI output (and still the console), inside the real ComfyUI."""

from __future__ import annotations

import logging
import threading

import torch

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.log import logger
from comfyui_hs_diffusion.hs_models.synthetic import Placement, random_figure
from comfyui_hs_diffusion.nodes.ui_warnings import WARNINGS_KEY, capture_warnings, show_warnings_on_node
from hs_testing.layouts import photos, same_person_pairs

H, W = 48, 40
ALIGN = dict(mode="layout", scale_min=0.5, scale_max=2.0, max_rotation=0.0, scale_nudge=1.0, offset_x=0)


def _ui(output) -> dict:
    ui = output.ui
    return {} if ui is None else (ui if isinstance(ui, dict) else ui.as_dict())


def _paste_back_scene(skin_rows: slice):
    g = torch.Generator().manual_seed(0)
    result, body, head = (torch.rand(1, H, W, 3, generator=g) for _ in range(3))
    head_mask = torch.zeros(1, H, W)
    head_mask[:, :16] = 1.0
    body_mask = torch.zeros(1, H, W)
    body_mask[:, 30:] = 1.0
    skin = torch.zeros(1, H, W)
    skin[:, skin_rows, 10:30] = 1.0
    neck = torch.zeros(1, H, W)
    neck[:, 14:34, 14:26] = 1.0
    args = (result, body, body_mask, "feathered", 2, 1.0)
    return args, {"head_image": head, "head_mask": head_mask, "head_skin_mask": skin, "neck_mask": neck}


def test_skin_tone_not_matched_is_shown_on_the_node_and_logged(pack_nodes, caplog):
    node = pack_nodes["HeadSwapPasteBack"]
    args, kwargs = _paste_back_scene(slice(0, 0))  # empty head skin: nothing to match
    with caplog.at_level(logging.WARNING, logger=logger.name):
        out = node.execute(*args, **kwargs)
    messages = _ui(out)[WARNINGS_KEY]
    assert messages == ["Skin tone not matched for image(s) [0]: head_skin_mask or the neck inside the band is empty."]
    assert messages[0] in caplog.text  # the console keeps it
    assert out.result[0].shape == (1, H, W, 3)
    args, kwargs = _paste_back_scene(slice(4, 14))  # skin present: matched, no warning, no UI output
    assert WARNINGS_KEY not in _ui(node.execute(*args, **kwargs))


def test_no_neck_drawn_is_shown_on_layout_inpaint(pack_nodes):
    labels = torch.zeros(2, 32, 32, dtype=torch.int64)
    labels[:, 10:20, 10:20] = UNKNOWN
    out = pack_nodes["HeadSwapLayoutInpaint"].execute(layout=SemanticLayout(labels, CANONICAL), backend="auto")
    (message,) = _ui(out)[WARNINGS_KEY]
    assert message.startswith("HeadSwapLayoutInpaint: no neck drawn for image(s) [0, 1]")
    assert not bool((out.result[0].labels == UNKNOWN).any())


def test_face_moved_onto_the_canvas_is_shown_next_to_neck_aligns_outputs(pack_nodes):
    g = torch.Generator().manual_seed(20)
    pair = same_person_pairs([random_figure(g)], [Placement(scale=0.6, shift=(-100, -60))], head_size=(256, 256))
    out = pack_nodes["HeadSwapNeckAlign"].execute(
        head_image=photos(pair.head), head_layout=pair.head_layout, body_layout=pair.body_layout, offset_y=-400, **ALIGN
    )
    ui = _ui(out)
    assert any("would leave the 512×512 canvas" in m for m in ui[WARNINGS_KEY])
    assert "to keep the face on the canvas" in out.result[4]  # the report output says it too


def test_warnings_of_other_threads_and_after_the_call_are_not_attributed_to_the_node():
    with capture_warnings() as messages:
        other = threading.Thread(target=lambda: logger.warning("from another prompt's thread"))
        other.start()
        other.join()
        logger.info("not a warning")
        logger.getChild("parsing").warning("child logger %d", 1)
    logger.warning("after the node returned")
    assert messages == ["child logger 1"]


def test_every_registered_node_shows_its_warnings_and_wrapping_is_idempotent(pack_nodes):
    for node_id, node in pack_nodes.items():
        assert getattr(node.execute.__func__, "_hs_shows_warnings", False), node_id
        execute = node.__dict__["execute"]
        assert show_warnings_on_node(node).__dict__["execute"] is execute


def test_warnings_join_a_preview_the_node_already_returns():
    from comfy_api.latest import io, ui

    from comfyui_hs_diffusion.nodes.ui_warnings import with_warnings

    out = with_warnings(io.NodeOutput(1, ui=ui.PreviewText("report")), ["first"])
    assert out.ui == {"text": ("report",), WARNINGS_KEY: ["first"]} and out.result == (1,)
    out = with_warnings(with_warnings((2,), ["a"]), ["b"])
    assert out.ui == {WARNINGS_KEY: ["a", "b"]} and out.result == (2,)
    plain = io.NodeOutput(3)
    assert with_warnings(plain, []) is plain and plain.ui is None
