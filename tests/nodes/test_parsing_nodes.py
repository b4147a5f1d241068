"""The face parsing nodes inside the real ComfyUI (in-process, CPU)."""

from __future__ import annotations

import datetime
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout, labels_from_rgb
from hs_testing.parsing import (
    FIXTURE_BISENET,
    FIXTURE_EXPECTED,
    blank_bisenet_state_dict,
    fake_sd_checkpoint,
    fixture_bisenet_state_dict,
    tiny_segformer_config,
    tiny_segformer_state_dict,
    write_segformer_folder,
)

HEAD = torch.tensor(CANONICAL.group_ids("head"))


@pytest.fixture(scope="module")
def parsing_dir(comfy_dirs, fixtures_dir):
    folder = comfy_dirs["models"] / "headswap_parsing"
    shutil.copy(fixtures_dir / FIXTURE_BISENET, folder / "bisenet_fixture.safetensors")
    return folder


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return dict(np.load(fixtures_dir / FIXTURE_EXPECTED))


@pytest.fixture(scope="module")
def bisenet(pack_nodes, parsing_dir):
    return (
        pack_nodes["HeadSwapParsingModelLoader"]
        .execute(model_name="bisenet_fixture.safetensors", precision="auto")
        .result[0]
    )


@pytest.fixture(scope="module")
def tiny_segformer(pack_nodes, parsing_dir):
    """A ~50k-parameter SegFormer working at 64² (fast): for batch, progress and error tests."""
    config = tiny_segformer_config()
    preprocessor = {"size": {"height": 64, "width": 64}}
    write_segformer_folder(
        parsing_dir / "tiny64", config, tiny_segformer_state_dict(config, seed=5), preprocessor=preprocessor
    )
    loader = pack_nodes["HeadSwapParsingModelLoader"]
    return loader.execute(model_name="tiny64/model.safetensors", precision="auto").result[0]


def _parse(pack_nodes, parser, image, mode="whole image", min_region_percent=0.0, crop_scale=1.6):
    node = pack_nodes["HeadSwapFaceParse"]
    return node.execute(
        parser=parser, image=image, mode=mode, min_region_percent=min_region_percent, crop_scale=crop_scale
    )


def test_loader_offers_detects_and_wraps_the_bisenet(pack_nodes, parsing_dir, bisenet):
    import comfy.model_patcher

    loader = pack_nodes["HeadSwapParsingModelLoader"]
    options = loader.GET_NODE_INFO_V1()["input"]["required"]["model_name"]
    assert "bisenet_fixture.safetensors" in (options[1]["options"] if len(options) > 1 else options[0])
    assert loader.validate_inputs(model_name="bisenet_fixture.safetensors", precision="auto") is True
    assert bisenet.kind == "BiSeNet" and bisenet.dtype == torch.float32  # auto precision on the CPU
    assert isinstance(bisenet.patcher, comfy.model_patcher.ModelPatcher)
    assert bisenet.patcher.model_dtype() == torch.float32


def test_face_parse_reproduces_the_reference_on_the_photo(pack_nodes, comfy_dirs, bisenet, expected):
    photo = torch.from_numpy(expected["astronaut_uint8"]).float()[None] / 255.0
    out = _parse(pack_nodes, bisenet, photo)
    layout = out.result[0]
    assert isinstance(layout, SemanticLayout) and layout.label_set is CANONICAL
    reference = bisenet.network.to_canonical[torch.from_numpy(expected["astronaut_argmax"]).long()]
    decided = ~torch.from_numpy(expected["astronaut_near_tie"])
    assert torch.equal(layout.labels[decided], reference[decided])
    # The UI preview: one palette PNG per image in the temp folder, decoding to exactly the layout.
    (preview,) = out.ui.as_dict()["images"]
    assert preview["type"] == "temp"
    saved = Image.open(comfy_dirs["temp"] / preview["subfolder"] / preview["filename"])
    assert saved.mode == "P" and saved.size == (512, 512)
    decoded = labels_from_rgb(np.asarray(saved.convert("RGB")), CANONICAL, "preview")
    assert torch.equal(decoded, layout.labels[0])


def test_pickled_checkpoint_loads_with_weights_only(pack_nodes, parsing_dir, fixtures_dir, bisenet):
    sd = {k: v.float() if v.is_floating_point() else v for k, v in fixture_bisenet_state_dict(fixtures_dir).items()}
    torch.save(sd, parsing_dir / "79999_iter.pth")
    parser = pack_nodes["HeadSwapParsingModelLoader"].execute(model_name="79999_iter.pth", precision="auto").result[0]
    rgb = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(parser.network.logits(rgb), bisenet.network.logits(rgb))


def test_missing_model_names_the_folder_and_the_readme_section(pack_nodes, parsing_dir):
    loader = pack_nodes["HeadSwapParsingModelLoader"]
    message = loader.validate_inputs(model_name="79999_iter_missing.pth", precision="auto")
    assert "'79999_iter_missing.pth' is not in the headswap_parsing model folder" in message
    assert str(parsing_dir) in message and 'README section "Face parsing models"' in message
    with pytest.raises(FileNotFoundError, match='README section "Face parsing models"'):
        loader.execute(model_name="79999_iter_missing.pth", precision="auto")


def test_files_that_are_not_parsers_are_refused_by_name(pack_nodes, parsing_dir):
    loader = pack_nodes["HeadSwapParsingModelLoader"]
    save_file(fake_sd_checkpoint(), str(parsing_dir / "sd15_fake.safetensors"))
    with pytest.raises(
        ValueError, match=r"model 'sd15_fake.safetensors' is not a face parsing model \(it holds 3 tensors named like"
    ) as error:
        loader.execute(model_name="sd15_fake.safetensors", precision="auto")
    assert "expected a BiSeNet face parser with 19 CelebAMask-HQ classes" in str(error.value)
    assert "or a SegFormer face parser" in str(error.value)
    torch.save({"saved": datetime.date(2020, 1, 1)}, parsing_dir / "pickled_object.pth")
    with pytest.raises(ValueError, match=r"model 'pickled_object.pth' could not be read .* weights_only=True"):
        loader.execute(model_name="pickled_object.pth", precision="auto")
    (parsing_dir / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match=r"model 'junk.pth' could not be read as a weights file"):
        loader.execute(model_name="junk.pth", precision="auto")


def test_segformer_folder_through_the_nodes(pack_nodes, parsing_dir):
    config = tiny_segformer_config()
    write_segformer_folder(parsing_dir / "face-parsing", config, tiny_segformer_state_dict(config, favour=1))
    loader = pack_nodes["HeadSwapParsingModelLoader"]
    name = "face-parsing/model.safetensors"
    assert loader.validate_inputs(model_name=name, precision="auto") is True
    parser = loader.execute(model_name=name, precision="bf16").result[0]
    assert parser.kind == "SegFormer" and parser.dtype == torch.bfloat16
    image = torch.rand(2, 50, 70, 4)  # RGBA, not square
    layout = _parse(pack_nodes, parser, image).result[0]
    assert layout.labels.shape == (2, 50, 70)
    assert (layout.labels == CANONICAL.index("face")).all()  # channel 1 is skin in this config
    save_file(tiny_segformer_state_dict(config), str(parsing_dir / "segformer_without_config.safetensors"))
    with pytest.raises(ValueError, match="holds SegFormer weights but no config.json lies next to it"):
        loader.execute(model_name="segformer_without_config.safetensors", precision="auto")


def test_batches_run_in_chunks_with_progress(pack_nodes, tiny_segformer, monkeypatch):
    import comfy.utils

    from comfyui_hs_diffusion.nodes import face_parser

    images = torch.rand(3, 96, 64, 1)  # greyscale
    single = _parse(pack_nodes, tiny_segformer, images).result[0]
    calls = []
    monkeypatch.setattr(face_parser, "MAX_CHUNK", 2)
    monkeypatch.setattr(
        comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: calls.append((value, total))
    )
    chunked = _parse(pack_nodes, tiny_segformer, images).result[0]
    assert torch.equal(chunked.labels, single.labels)
    assert calls[0] == (2, 3) and calls[-1] == (3, 3)


def test_chunks_follow_the_patchers_free_memory_where_comfyui_has_it(pack_nodes, tiny_segformer, monkeypatch):
    """Newer ComfyUI's ``ModelPatcher.get_free_memory`` also counts VRAM that DynamicVRAM frees on demand, and core
    sizes its batches by it; the parser does the same where the method exists (0.3.75: ``mm.get_free_memory``)."""
    import comfy.utils

    from comfyui_hs_diffusion.nodes import face_parser

    per_image = face_parser.bytes_per_image(tiny_segformer)
    asked = []

    def get_free_memory(device):
        asked.append(device)
        return per_image  # room for one image at a time

    monkeypatch.setattr(tiny_segformer.patcher, "get_free_memory", get_free_memory, raising=False)
    calls = []
    monkeypatch.setattr(
        comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: calls.append((value, total))
    )
    _parse(pack_nodes, tiny_segformer, torch.rand(3, 64, 64, 3))
    assert asked == [tiny_segformer.patcher.load_device]
    assert calls[:3] == [(1, 3), (2, 3), (3, 3)]


def test_interrupts_stop_the_parse(pack_nodes, tiny_segformer):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        _parse(pack_nodes, tiny_segformer, torch.rand(1, 32, 32, 3))
    assert not mm.processing_interrupted()


def test_bad_images_give_clear_errors(pack_nodes, tiny_segformer):
    with pytest.raises(ValueError, match=r"image: the batch is empty \(0 images\)"):
        _parse(pack_nodes, tiny_segformer, torch.rand(0, 64, 64, 3))
    with pytest.raises(ValueError, match=r"image: the images are 64×0 pixels"):
        _parse(pack_nodes, tiny_segformer, torch.rand(1, 0, 64, 3))


def test_photo_without_a_face_gives_an_empty_head_and_a_warning(pack_nodes, parsing_dir, fixtures_dir, caplog):
    save_file(blank_bisenet_state_dict(fixtures_dir), str(parsing_dir / "blank.safetensors"))
    parser = (
        pack_nodes["HeadSwapParsingModelLoader"].execute(model_name="blank.safetensors", precision="auto").result[0]
    )
    with caplog.at_level(logging.WARNING, logger="comfyui_hs_diffusion"):
        out = _parse(pack_nodes, parser, torch.rand(1, 40, 40, 3), mode="auto")
    layout = out.result[0]
    assert not torch.isin(layout.labels, HEAD).any()
    assert "no face found in image(s) 0 (batch index from 0) of 1" in caplog.text
    # shown on the node too, next to its layout previews
    assert out.ui["images"] and "no face found in image(s) 0" in out.ui["hs_warnings"][0]
