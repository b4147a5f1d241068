"""Checks that refuse bad input before anything runs: every node's combos and numbers, Load Layout's path
confinement, poses, tiny images, Paste Back's crop allowance, the dilation cap, the LDM head-count warning."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from comfy_api.latest import io
from PIL import Image

from comfyui_hs_diffusion.hs_models.mixing import dilate, useful_radius
from comfyui_hs_diffusion.hs_models.paste_back import is_vae_crop, place_result
from comfyui_hs_diffusion.nodes.layout_io import resolve_input_file
from comfyui_hs_diffusion.nodes.neck_align import check_pose
from comfyui_hs_diffusion.nodes.sources import check_crop


def _widget_values(schema) -> dict:
    """A valid typed-in value for every widget input (links left out, as ComfyUI passes None for them)."""
    values = {}
    for item in schema.inputs:
        if isinstance(item, io.Combo.Input):
            if item.options:
                values[item.id] = item.default if item.default in item.options else item.options[0]
        elif str(item.get_io_type()) in ("INT", "FLOAT", "STRING", "BOOLEAN"):
            values[item.id] = item.default if item.default is not None else getattr(item, "min", None) or 0
    return values


def test_every_node_refuses_a_bad_value_for_every_combo_and_number(pack_nodes, comfy_dirs):
    """Each node's validate_inputs checks its own schema: new nodes and new inputs are covered by this test.
    (A node without it fails here: add ``validate_inputs`` calling nodes.validation.validate_schema_values.)"""
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(comfy_dirs["input"] / "combo_check.png")
    checked = 0
    for node_id, node in pack_nodes.items():
        schema = node.define_schema()
        values = _widget_values(schema)
        if node_id == "HeadSwapLoadLayout":
            values["image"] = "combo_check.png"
        for item in schema.inputs:
            if item.id not in values or (isinstance(item, io.Combo.Input) and not item.options):
                continue
            good = node.validate_inputs(**values)
            if item.id in ("model_name", "ckpt_name", "image"):
                continue  # file choices: tested with the loaders and Load Layout below
            assert good is True, f"{node_id}: valid values refused: {good}"
            kind = str(item.get_io_type())
            if isinstance(item, io.Combo.Input):
                bad = {**values, item.id: "no such choice"}
                expected = f"{item.id}: 'no such choice' is not one of the choices"
            elif kind in ("INT", "FLOAT") and getattr(item, "max", None) is not None:
                bad = {**values, item.id: item.max + 1}
                expected = f"{item.id}: {item.max + 1} is larger than the maximum {item.max}"
            else:
                continue
            message = node.validate_inputs(**bad)
            assert isinstance(message, str) and expected in message, (node_id, item.id, message)
            checked += 1
    assert checked >= 40


def test_typed_in_values_on_sockets_are_refused(pack_nodes):
    message = pack_nodes["HeadSwapLayoutPreview"].validate_inputs(layout="a layout", opacity=0.5)
    assert "layout: got the value 'a layout' typed in" in message and "HEADSWAP_LAYOUT" in message
    assert pack_nodes["HeadSwapLayoutPreview"].validate_inputs(layout=None, opacity=0.5) is True  # linked
    message = pack_nodes["HeadSwapLayoutPreview"].validate_inputs(layout=None, opacity="much")
    assert "opacity: 'much' is not a number" in message


def test_model_file_choices_name_the_folder_and_readme(pack_nodes):
    loader = pack_nodes["HeadSwapDiffusionLoader"]
    message = loader.validate_inputs(ckpt_name="../outside.safetensors", weights="auto")
    assert "ckpt_name: '../outside.safetensors' is not in the headswap_diffusion model folder" in message
    assert "README section 'Models'" in message
    message = pack_nodes["HeadSwapParsingModelLoader"].validate_inputs(model_name="/etc/passwd", precision="auto")
    assert "is not in the headswap_parsing model folder" in message


def test_load_layout_stays_inside_the_input_folder(comfy_dirs, tmp_path):
    inp = comfy_dirs["input"]
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(inp / "inside.png")
    (inp / "sub").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="L").save(inp / "sub" / "deeper.png")
    outside = tmp_path / "outside.png"
    shutil.copy(inp / "inside.png", outside)
    link = inp / "link_out.png"
    if not link.exists():
        link.symlink_to(outside)
    assert resolve_input_file("inside.png") == os.path.realpath(inp / "inside.png")
    assert resolve_input_file("inside.png [input]") == os.path.realpath(inp / "inside.png")
    assert resolve_input_file("sub/deeper.png") == os.path.realpath(inp / "sub" / "deeper.png")
    assert resolve_input_file("sub/../inside.png") == os.path.realpath(inp / "inside.png")
    messages = set()
    for name in (str(outside), "../" + outside.name, "link_out.png", "sub", "/etc/passwd", "/no/such/file", ""):
        with pytest.raises(ValueError, match="is not in the input folder") as error:
            resolve_input_file(name)
        messages.add(str(error.value).replace(repr(name), "NAME"))
    assert len(messages) == 1  # the same answer whether or not an outside path exists


def test_load_layout_names_a_damaged_file(pack_nodes, comfy_dirs):
    data = (comfy_dirs["input"] / "inside.png").read_bytes() if (comfy_dirs["input"] / "inside.png").exists() else b""
    (comfy_dirs["input"] / "damaged.png").write_bytes(data[:20] or b"\x89PNG\r\n")
    with pytest.raises(ValueError, match=r"image: 'damaged.png' could not be read as an image"):
        pack_nodes["HeadSwapLoadLayout"].execute(image="damaged.png", label_set="canonical8", decode="auto")


@pytest.mark.parametrize(
    ("pose", "message"),
    [
        ("keypoints", "head_pose: got str"),
        ([1, 2], "head_pose: frame 0 is a int"),
        ({"people": 3}, "'people' of type int"),
        ({"people": [{"pose_keypoints_2d": ["x", 1, 2]}]}, "has the keypoint value 'x'"),
        ({"people": [{"pose_keypoints_2d": [True, 1, 2]}]}, "has the keypoint value True"),
        ({"people": [], "canvas_width": -5}, "canvas_width -5, not a positive number"),
        ({"people": ["person"]}, "person 0 is not a dict"),
    ],
)
def test_malformed_poses_are_named(pose, message):
    with pytest.raises(ValueError, match=message):
        check_pose(pose, "head_pose")


def test_wellformed_pose_passes():
    check_pose([{"people": [{"pose_keypoints_2d": [0.5, 0.5, 1.0] * 18}], "canvas_width": 64}], "body_pose")
    check_pose({"people": []}, "body_pose")


def test_tiny_images_are_refused_in_pixels_before_encoding():
    with pytest.raises(ValueError, match=r"are 7×13 px; .* cropped to 4×12 px .* multiple of 4 px, e.g. 8×12"):
        check_crop(7, 13, 4)
    with pytest.raises(ValueError, match=r"are 1×1 px, smaller than one latent cell of this VAE \(8×8 px\)"):
        check_crop(1, 1, 8)
    check_crop(513, 512, 8)  # a few pixels of a photo: cropped as VAE Encode does
    check_crop(67, 70, 8)


def test_paste_back_allows_exactly_a_vae_crop():
    assert is_vae_crop((512, 512), (515, 519))  # factor 8 crop
    assert is_vae_crop((12, 4), (13, 7))  # factor 4
    assert not is_vae_crop((480, 480), (512, 512))  # 32 px smaller is no VAE crop of a 512² image
    assert not is_vae_crop((500, 512), (512, 512))
    body = torch.zeros(1, 13, 7, 3)
    assert place_result(torch.ones(1, 12, 4, 3), body).shape == (1, 13, 7, 3)
    with pytest.raises(ValueError, match="result is 32×32 but body_image is 64×64"):
        place_result(torch.ones(1, 32, 32, 3), torch.zeros(1, 64, 64, 3))


def test_dilation_radius_is_capped_at_the_diagonal():
    assert useful_radius(999, (16, 16)) == 23
    assert useful_radius(3, (16, 16)) == 3
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 0, 0] = 1.0  # one corner cell reaches every cell only with a radius of the diagonal
    assert torch.equal(dilate(mask, 999), torch.ones_like(mask))
    assert torch.equal(dilate(mask, 999), dilate(mask, 23))
    assert not torch.equal(dilate(mask, 20), torch.ones_like(mask))


def test_ldm_loader_warns_when_it_assumes_the_head_count(pack_nodes, comfy_dirs, fixtures_dir, caplog):
    """The fixture .ckpt has no config beside it: it loads with 8 heads assumed (it was trained with 4, so the
    output would be wrong without an error), loudly, with how to give the config; with the config, silence."""
    shutil.copy(fixtures_dir / "ldm_tiny.ckpt", comfy_dirs["models"] / "headswap_diffusion" / "no_config.ckpt")
    loader = pack_nodes["HeadSwapDiffusionLoader"]
    result = loader.execute(ckpt_name="no_config.ckpt", weights="auto", weight_dtype="default", quantize_on_decode=True)
    info = result.result[2]
    assert "ASSUMED" in info and "no_config.yaml" in info and "convert_ldm.py" in info, info
    assert any("ASSUMED" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    shutil.copy(fixtures_dir / "ldm_tiny_config.json", comfy_dirs["models"] / "headswap_diffusion" / "no_config.json")
    result = loader.execute(ckpt_name="no_config.ckpt", weights="auto", weight_dtype="default", quantize_on_decode=True)
    assert "ASSUMED" not in result.result[2]
