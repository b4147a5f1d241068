"""Layout blending, weight-free inpainting and semantic calibration on drawn figures (docs/method.md §5–§7)."""

import functools
import logging

import pytest
import torch
import torch.nn.functional as F

from comfyui_hs_diffusion.hs_models.alignment import AlignmentOptions, estimate_alignment, warp_head
from comfyui_hs_diffusion.hs_models.blending import blend_layouts, pixels_for
from comfyui_hs_diffusion.hs_models.calibration import calibrate_masks
from comfyui_hs_diffusion.hs_models.inpainting import inpaint_layout
from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5, UNKNOWN, get_label_set
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.morphology import dilate_np
from comfyui_hs_diffusion.hs_models.synthetic import Placement, random_figure
from hs_testing.layouts import photos, same_person_pairs

SIZE = (384, 384)


def swap_cases(label_set=CANONICAL, seed=30):
    """Four people's heads aligned over four other people's bodies (cached: tests never modify them)."""
    return _swap_cases(label_set.name, seed)


@functools.cache
def _swap_cases(label_set_name, seed):
    label_set = get_label_set(label_set_name)
    g = torch.Generator().manual_seed(seed)
    heads = [random_figure(g), random_figure(g, long_hair=60.0), random_figure(g, hat=True), random_figure(g)]
    bodies = [random_figure(g, long_hair=80.0), random_figure(g), random_figure(g), random_figure(g, neck_cover="hair")]
    place = [Placement(scale=0.75, shift=(-64, -50))] * 4
    head_pair = same_person_pairs(heads, [Placement(scale=0.8, shift=(-40, -30))] * 4, place, SIZE, SIZE, label_set)
    body_pair = same_person_pairs(bodies, place, place, SIZE, SIZE, label_set)
    transform = estimate_alignment(head_pair.head_layout, body_pair.body_layout, AlignmentOptions(mode="layout"))
    warped = warp_head(photos(head_pair.head), head_pair.head_layout, transform)
    return warped.layout, body_pair.body_layout


def ids(label_set, *groups):
    return torch.tensor([i for g in groups for i in label_set.group_ids(g)])


def touches(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: does a 4-neighbour of ``a`` lie in ``b``?"""
    kernel = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)[None, None]
    grown = F.conv2d(a[:, None].float(), kernel, padding=1)[:, 0] > 0
    return (grown & b).flatten(1).any(1)


@pytest.mark.parametrize("keep_background", [True, False])
def test_blend_masks_are_disjoint_cover_the_canvas_and_follow_z_order(keep_background):
    head, body = swap_cases()
    result = blend_layouts(head, body, keep_body_background=keep_background)
    h, b, t = result.head_mask, result.body_mask, result.transition_mask
    for mask in (h, b, t):
        assert mask.dtype == torch.float32 and mask.shape == (4, *SIZE)
        assert bool(((mask == 0) | (mask == 1)).all())
    assert torch.equal(h + b + t, torch.ones_like(h)) and not bool((h * b).any())
    labels = result.layout.labels
    # whatever the layout leaves for the generator to fill is generated, never kept
    assert bool((labels == UNKNOWN).any()) and bool((t[labels == UNKNOWN] == 1).all())
    head_classes = torch.isin(head.labels, ids(CANONICAL, "head"))
    # z-order: wherever the aligned head has hair/face/hat, the blend shows the head (long hair over clothes)
    assert torch.equal(labels[head_classes], head.labels[head_classes])
    assert not bool((b.bool() & head_classes).any())
    assert bool((head_classes & torch.isin(body.labels, ids(CANONICAL, "body"))).any())  # hair over clothes exists
    # the kept head is the head's classes, the kept body the body's classes (or its background)
    assert bool(torch.isin(head.labels[h.bool()], ids(CANONICAL, "head")).all())
    allowed = ids(CANONICAL, "body", "background") if keep_background else ids(CANONICAL, "body")
    assert bool(torch.isin(body.labels[b.bool()], allowed).all())
    # the body's own head and neck are gone: outside the new head they are UNKNOWN
    old_head = torch.isin(body.labels, ids(CANONICAL, "head", "neck")) & ~head_classes
    assert bool((labels[old_head] == UNKNOWN).all())
    # every person pixel is head, kept body, or a hole; background labels stay known
    person = torch.isin(body.labels, ids(CANONICAL, "person")) | torch.isin(head.labels, ids(CANONICAL, "head", "neck"))
    known_body = torch.isin(labels, ids(CANONICAL, "body")) & (labels == body.labels)
    assert bool((head_classes | known_body | (labels == UNKNOWN))[person].all())
    background = ~person & (body.labels == CANONICAL.index("background"))
    assert bool((labels[background] == CANONICAL.index("background")).all())
    if keep_background:
        far = background & ~torch.from_numpy(dilate_np(person.numpy(), 20))
        assert bool(b.bool()[far].all())  # the body photo's background is kept
    else:
        assert not bool((b.bool() & background).any())  # the background is generated from its label


def test_blend_seam_band_and_erosions_scale_with_the_image():
    head, body = swap_cases()
    result = blend_layouts(head, body, head_erosion=0.0, body_erosion=0.0, seam_band=0.02)
    head_classes = torch.isin(head.labels, ids(CANONICAL, "head"))
    band = torch.from_numpy(dilate_np(head_classes.numpy(), pixels_for(0.02, *SIZE))) & ~head_classes
    assert pixels_for(0.02, *SIZE) == 8.0
    assert not bool((result.body_mask.bool() & band).any()) and bool(result.transition_mask.bool()[band].all())
    assert torch.equal(result.head_mask.bool(), head_classes)
    eroded = blend_layouts(head, body, head_erosion=0.01)
    assert int(eroded.head_mask.sum()) < int(result.head_mask.sum())


def test_blend_refuses_mismatched_inputs():
    head, body = swap_cases()
    small = SemanticLayout(body.labels[:, :200], CANONICAL)
    with pytest.raises(ValueError, match=r"head_layout is 384×384 but body_layout is 384×200"):
        blend_layouts(head, small)
    with pytest.raises(ValueError, match="head_layout uses label set 'canonical8' but body_layout uses 'paper5'"):
        blend_layouts(head, SemanticLayout(body.labels.clamp(max=4), PAPER5))
    with pytest.raises(ValueError, match=r"batch sizes do not match \(head_layout has 4, body_layout has 3\)"):
        blend_layouts(head, SemanticLayout(body.labels[:3], CANONICAL))
    with pytest.raises(ValueError, match="seam_band must be a fraction of the image size between 0 and 0.25, got 3"):
        blend_layouts(head, body, seam_band=3)
    one = blend_layouts(SemanticLayout(head.labels[:1], CANONICAL), body)
    assert one.layout.batch_size == 4


@pytest.mark.parametrize("label_set", [CANONICAL, PAPER5], ids=lambda s: s.name)
def test_inpainting_fills_every_hole_draws_a_joining_neck_and_keeps_known_labels(label_set):
    head, body = swap_cases(label_set)
    blended = blend_layouts(head, body).layout
    holes = blended.labels == UNKNOWN
    assert bool(holes.flatten(1).any(1).all())
    result = inpaint_layout(blended)
    labels = result.layout.labels
    assert not bool((labels == UNKNOWN).any())
    assert torch.equal(result.filled, holes)
    assert torch.equal(labels[~holes], blended.labels[~holes])  # known labels unchanged outside the holes
    neck = labels == label_set.index("neck")
    assert bool(neck.flatten(1).any(1).all())
    assert bool(touches(neck, labels == label_set.index("face")).all())
    assert bool(touches(neck, labels == label_set.index("clothes")).all())
    # the old head area becomes background or body, never hair or face
    assert not bool(torch.isin(labels[holes], ids(label_set, "head")).any())


def test_inpainting_without_holes_or_face():
    head, body = swap_cases()
    complete = SemanticLayout(body.labels.clone(), CANONICAL)
    assert torch.equal(inpaint_layout(complete).layout.labels, body.labels)
    labels = torch.full((1, 40, 40), CANONICAL.index("clothes"))
    labels[:, :20] = CANONICAL.index("background")
    labels[:, 15:25, 10:30] = UNKNOWN
    result = inpaint_layout(SemanticLayout(labels, CANONICAL))
    filled = result.layout.labels
    assert not bool((filled == UNKNOWN).any())
    assert bool((filled[:, 16:19, 12:28] == CANONICAL.index("background")).all())
    assert bool((filled[:, 21:24, 12:28] == CANONICAL.index("clothes")).all())
    only_holes = torch.full((1, 8, 8), UNKNOWN)
    assert bool((inpaint_layout(SemanticLayout(only_holes, CANONICAL)).layout.labels == 0).all())


def test_inpainting_logs_images_without_a_neck(caplog):
    labels = torch.zeros(1, 32, 32, dtype=torch.int64)
    labels[:, 10:20, 10:20] = UNKNOWN
    with caplog.at_level(logging.WARNING, logger="comfyui_hs_diffusion"):
        inpaint_layout(SemanticLayout(labels, CANONICAL))
    assert "no neck drawn for image(s) [0]" in caplog.text


@functools.cache
def pipeline():
    head, body = swap_cases()
    blended = blend_layouts(head, body)
    completed = inpaint_layout(blended.layout).layout
    return body, blended, completed


@pytest.mark.parametrize("latent_cell", [8, 4])
def test_calibrated_masks_are_disjoint_sum_to_one_and_never_bleed(latent_cell):
    body, blended, completed = pipeline()
    masks = calibrate_masks(completed, body, blended.head_mask, blended.body_mask, latent_cell=latent_cell)
    h, b, t = masks.head_mask, masks.body_mask, masks.transition_mask
    assert torch.equal(h + b + t, torch.ones_like(h)) and not bool((h * b).any())
    for mask in (h, b, t):
        assert bool(((mask == 0) | (mask == 1)).all())
    assert bool((h <= blended.head_mask).all()) and bool((b <= blended.body_mask).all())
    assert int(h.sum()) > 0 and int(b.sum()) > 0
    # At the latent resolution (cell f or finer), with max-pool ("any pixel") or ComfyUI's bilinear
    # downscaling, every latent cell that keeps a source lies entirely inside that source's region.
    for source, region in ((h, blended.head_mask), (b, blended.body_mask)):
        for f in {latent_cell, max(latent_cell // 2, 1)}:
            inside = -F.max_pool2d(-region[:, None], f)[:, 0]  # 1 where the whole cell is in the region
            touched = F.max_pool2d(source[:, None], f)[:, 0] > 0
            assert bool((inside[touched] == 1).all())
            latent = F.interpolate(source[:, None], size=(SIZE[0] // f, SIZE[1] // f), mode="bilinear")[:, 0]
            assert bool((inside[latent > 0] == 1).all())


def test_calibration_drops_specks_and_regenerates_changed_labels():
    body, blended, completed = pipeline()
    head_mask = blended.head_mask.clone()
    body_mask = blended.body_mask.clone()
    # a 3×3 speck of "head" far from the head, and a body region whose label the generator changed
    speck = torch.zeros_like(head_mask, dtype=torch.bool)
    speck[:, 370:373, 5:8] = True
    labels = completed.labels.clone()
    labels[speck] = CANONICAL.index("hair")
    head_mask[speck] = 1.0
    body_mask[speck] = 0.0
    changed = torch.zeros_like(speck)
    changed[:, 300:340, 150:200] = True
    assert bool(body_mask.bool()[changed].all())
    labels[changed] = CANONICAL.index("arms")
    layout = SemanticLayout(labels, CANONICAL)
    masks = calibrate_masks(layout, body, head_mask, body_mask, latent_cell=0, min_region=0.0005)
    assert not bool(masks.head_mask.bool()[speck].any())
    assert not bool(masks.body_mask.bool()[changed].any()) and bool(masks.transition_mask.bool()[changed].all())
    untouched = calibrate_masks(layout, body, head_mask, body_mask, latent_cell=0, min_region=0.0)
    assert bool(untouched.head_mask.bool()[speck].all())


def test_calibration_refuses_mismatched_inputs():
    body, blended, completed = pipeline()
    with pytest.raises(ValueError, match=r"head_mask has shape \(4, 384, 200\) but the layout is 384×384"):
        calibrate_masks(completed, body, blended.head_mask[:, :, :200], blended.body_mask)
    with pytest.raises(
        ValueError, match=r"batch sizes do not match \(layout has 4, body_layout has 4, head_mask has 2"
    ):
        calibrate_masks(completed, body, blended.head_mask[:2], blended.body_mask)
    with pytest.raises(ValueError, match="latent_cell must be 0 or more pixels, got -1"):
        calibrate_masks(completed, body, blended.head_mask, blended.body_mask, latent_cell=-1)
    single = calibrate_masks(completed, body, blended.head_mask[:1], blended.body_mask[:1])
    assert single.head_mask.shape == (4, *SIZE)
