"""Load Layout Generator and Layout Inpaint's learned backend, in-process in ComfyUI, with a generator file
exported by the training command."""

from __future__ import annotations

import shutil

import pytest
import torch

from comfyui_hs_diffusion.hs_models.inpainting import inpaint_layout
from comfyui_hs_diffusion.hs_models.labels import CANONICAL, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.layout_generator import complete_layout, load_generator
from comfyui_hs_diffusion.hs_models.synthetic import Placement, random_figure
from hs_testing.layouts import photos, same_person_pairs, stack

ALIGN = dict(mode="auto", scale_min=0.5, scale_max=2.0, max_rotation=0.0, scale_nudge=1.0, offset_x=0, offset_y=0)
BLEND = dict(keep_body_background=True, head_erosion=0.004, body_erosion=0.004, seam_band=0.01)
SIZE = (320, 256)
NAME = "tiny_trained.safetensors"


@pytest.fixture(scope="module")
def generator_file(comfy_dirs, trained_layout_generator):
    target = comfy_dirs["models"] / "headswap_layout" / NAME
    shutil.copy(trained_layout_generator, target)
    return target


@pytest.fixture(scope="module")
def blended(pack_nodes):
    """Layout Blend's output for three different people under one head: UNKNOWN holes to fill."""
    g = torch.Generator().manual_seed(7)
    people = [random_figure(g, long_hair=40.0 * (i % 2)) for i in range(4)]
    head = same_person_pairs(people[:1], [Placement(scale=0.7, shift=(-60, -40))], head_size=(300, 280))
    bodies = same_person_pairs(people[1:], [Placement(scale=0.6, shift=(-128, -60))] * 3, head_size=SIZE)
    aligned = pack_nodes["HeadSwapNeckAlign"].execute(
        head_image=photos(head.head), head_layout=head.head_layout, body_layout=stack(bodies.head), **ALIGN
    )
    result = pack_nodes["HeadSwapLayoutBlend"].execute(
        head_layout=aligned.result[1], body_layout=stack(bodies.head), **BLEND
    )
    layout = result.result[0]
    assert bool((layout.labels == UNKNOWN).any())
    return layout, stack(bodies.head), result.result[1], result.result[2]


def test_trained_generator_loads_under_model_management_and_fills_only_the_holes(pack_nodes, generator_file, blended):
    import comfy.model_management as mm
    import comfy.model_patcher
    import folder_paths

    assert NAME in folder_paths.get_filename_list("headswap_layout")
    assert pack_nodes["HeadSwapLayoutGeneratorLoader"].validate_inputs(model_name=NAME) is True
    (generator,) = pack_nodes["HeadSwapLayoutGeneratorLoader"].execute(model_name=NAME).result
    assert isinstance(generator.patcher, comfy.model_patcher.ModelPatcher) and generator.name == NAME
    layout, body_layout, head_mask, body_mask = blended
    completed, filled = (
        pack_nodes["HeadSwapLayoutInpaint"].execute(layout=layout, backend="auto", generator=generator).result
    )
    assert any(loaded.model is generator.patcher for loaded in mm.current_loaded_models)
    holes = layout.labels == UNKNOWN
    assert torch.equal(filled.bool(), holes) and filled.dtype == torch.float32
    assert torch.equal(completed.labels[~holes], layout.labels[~holes])  # known labels never change
    assert not bool((completed.labels == UNKNOWN).any())
    # the node runs the production path: the same as the pure function on the same file
    direct, _ = complete_layout(load_generator(generator_file), layout)
    assert torch.equal(completed.labels, direct.labels)
    heuristic = inpaint_layout(layout).layout
    assert not torch.equal(completed.labels, heuristic.labels)  # auto picked the generator
    # the completed layout goes on into Semantic Calibration
    masks = pack_nodes["HeadSwapSemanticCalibration"].execute(
        layout=completed, body_layout=body_layout, head_mask=head_mask, body_mask=body_mask, latent_cell=8,
        min_region=0.0005,
    ).result  # fmt: skip
    assert torch.equal(sum(masks), torch.ones_like(masks[0]))


def test_backend_choice(pack_nodes, generator_file, blended):
    (generator,) = pack_nodes["HeadSwapLayoutGeneratorLoader"].execute(model_name=NAME).result
    layout = blended[0]
    node = pack_nodes["HeadSwapLayoutInpaint"]
    heuristic = inpaint_layout(layout).layout.labels
    assert torch.equal(node.execute(layout=layout, backend="auto").result[0].labels, heuristic)
    assert torch.equal(
        node.execute(layout=layout, backend="heuristic", generator=generator).result[0].labels, heuristic
    )
    learned = node.execute(layout=layout, backend="generator", generator=generator).result[0].labels
    assert not torch.equal(learned, heuristic)
    with pytest.raises(ValueError, match="'generator' needs a layout generator on the generator input"):
        node.execute(layout=layout, backend="generator")


def test_a_layout_of_another_size_and_batch_is_filled_at_the_generators_resolution(pack_nodes, generator_file):
    (generator,) = pack_nodes["HeadSwapLayoutGeneratorLoader"].execute(model_name=NAME).result
    labels = torch.full((2, 77, 131), CANONICAL.index("clothes"), dtype=torch.int64)
    labels[:, :30] = CANONICAL.index("background")
    labels[:, 20:40, 50:80] = UNKNOWN
    completed, filled = (
        pack_nodes["HeadSwapLayoutInpaint"]
        .execute(layout=SemanticLayout(labels, CANONICAL), backend="auto", generator=generator)
        .result
    )
    assert completed.labels.shape == (2, 77, 131) and not bool((completed.labels == UNKNOWN).any())
    assert torch.equal(completed.labels[~filled.bool()], labels[labels != UNKNOWN])


def test_loader_errors_name_the_file_and_the_fix(pack_nodes, comfy_dirs, generator_file):
    node = pack_nodes["HeadSwapLayoutGeneratorLoader"]
    message = node.validate_inputs(model_name="missing.safetensors")
    assert "missing.safetensors" in message and "headswap_layout" in message and "hs_training generator" in message
    from safetensors.torch import save_file

    save_file(
        {"first_stage_model.x": torch.zeros(2)}, str(comfy_dirs["models"] / "headswap_layout" / "ldm.safetensors")
    )
    with pytest.raises(ValueError, match=r"model_name 'ldm.safetensors' is not a layout generator of this pack"):
        node.execute(model_name="ldm.safetensors")
