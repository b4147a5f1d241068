"""Neck Align, Layout Blend, Layout Inpaint and Semantic Calibration executed in-process in ComfyUI."""

import pytest
import torch

from comfyui_hs_diffusion.hs_models.alignment import HeadTransform
from comfyui_hs_diffusion.hs_models.labels import CANONICAL, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.synthetic import HalfBodyFigure, Placement, random_figure
from hs_testing.layouts import photos, same_person_pairs, stack

ALIGN_DEFAULTS = dict(
    mode="auto", scale_min=0.5, scale_max=2.0, max_rotation=0.0, scale_nudge=1.0, offset_x=0, offset_y=0
)
SIZE = (320, 256)


def people(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [random_figure(g, long_hair=40.0 * (i % 2)) for i in range(n)]


def run_chain(pack_nodes, head_image, head_layout, body_layout, **align):
    aligned = pack_nodes["HeadSwapNeckAlign"].execute(
        head_image=head_image, head_layout=head_layout, body_layout=body_layout, **{**ALIGN_DEFAULTS, **align}
    )
    image, layout, valid, transform, report = aligned.result
    blend = pack_nodes["HeadSwapLayoutBlend"].execute(
        head_layout=layout,
        body_layout=body_layout,
        keep_body_background=True,
        head_erosion=0.004,
        body_erosion=0.004,
        seam_band=0.01,
    )
    blended, head_mask, body_mask, transition = blend.result
    completed, filled = pack_nodes["HeadSwapLayoutInpaint"].execute(layout=blended, backend="auto").result
    masks = (
        pack_nodes["HeadSwapSemanticCalibration"]
        .execute(
            layout=completed,
            body_layout=body_layout,
            head_mask=head_mask,
            body_mask=body_mask,
            latent_cell=8,
            min_region=0.0005,
        )
        .result
    )
    return dict(
        image=image,
        layout=layout,
        valid=valid,
        transform=transform,
        report=report,
        blended=blended,
        blend_masks=(head_mask, body_mask, transition),
        completed=completed,
        filled=filled,
        masks=masks,
    )


def test_the_four_stages_chain_with_a_single_head_over_a_batch_of_bodies(pack_nodes):
    heads = same_person_pairs(people(1, 40), [Placement(scale=0.7, shift=(-60, -40))], head_size=(300, 280))
    bodies = same_person_pairs(people(3, 41), [Placement(scale=0.6, shift=(-128, -60))] * 3, head_size=SIZE)
    out = run_chain(pack_nodes, photos(heads.head), heads.head_layout, stack(bodies.head))
    assert out["image"].shape == (3, *SIZE, 3) and out["image"].dtype == torch.float32
    assert isinstance(out["layout"], SemanticLayout) and out["layout"].labels.shape == (3, *SIZE)
    assert out["valid"].shape == (3, *SIZE)
    assert isinstance(out["transform"], HeadTransform) and out["transform"].batch_size == 3
    assert out["report"].count("\n") == 2 and out["report"].startswith("image 0: layout (neck widths)")
    assert bool((out["blended"].labels == UNKNOWN).any()) and not bool((out["completed"].labels == UNKNOWN).any())
    assert torch.equal(out["filled"].bool(), out["blended"].labels == UNKNOWN)
    for masks in (out["blend_masks"], out["masks"]):
        head, body, transition = masks
        assert head.shape == (3, *SIZE) and head.dtype == torch.float32
        assert torch.equal(head + body + transition, torch.ones_like(head)) and not bool((head * body).any())
        assert bool(head.flatten(1).any(1).all()) and bool(body.flatten(1).any(1).all())
    # calibration only ever shrinks what the blend kept
    assert bool((out["masks"][0] <= out["blend_masks"][0]).all()) and bool(
        (out["masks"][1] <= out["blend_masks"][1]).all()
    )


def test_keypoints_through_the_node(pack_nodes):
    pair = same_person_pairs(
        [HalfBodyFigure()],
        [Placement(scale=0.55, shift=(-100, -70))],
        [Placement(scale=0.5, shift=(-128, -80))],
        (300, 300),
        SIZE,
    )

    def pose(drawn):
        height, width = drawn.labels.shape
        keypoints = drawn.keypoints.reshape(-1).tolist()
        return [{"people": [{"pose_keypoints_2d": keypoints}], "canvas_width": width, "canvas_height": height}]

    out = pack_nodes["HeadSwapNeckAlign"].execute(
        head_image=photos(pair.head),
        head_layout=pair.head_layout,
        body_layout=pair.body_layout,
        head_pose=pose(pair.head[0]),
        body_pose=pose(pair.body[0]),
        **ALIGN_DEFAULTS,
    )
    transform, report = out.result[3], out.result[4]
    assert report.startswith("image 0: keypoints (shoulder widths)")
    assert abs(float(transform.scales[0]) - 0.5 / 0.55) < 1e-4


def test_neck_align_errors_name_the_input(pack_nodes):
    pair = same_person_pairs(
        people(2, 42), [Placement(scale=0.6, shift=(-100, -60))] * 2, body_size=SIZE, head_size=SIZE
    )
    node = pack_nodes["HeadSwapNeckAlign"]
    with pytest.raises(ValueError, match=r"head_image is 200×320 but head_layout is 256×320"):
        node.execute(
            head_image=torch.rand(1, 320, 200, 3),
            head_layout=pair.head_layout,
            body_layout=pair.body_layout,
            **ALIGN_DEFAULTS,
        )
    labels = pair.head_layout.labels.clone()
    labels[1][labels[1] == CANONICAL.index("face")] = CANONICAL.index("background")
    with pytest.raises(ValueError, match=r"head_layout: image 1 has no face"):
        node.execute(
            head_image=photos(pair.head),
            head_layout=SemanticLayout(labels, CANONICAL),
            body_layout=pair.body_layout,
            **ALIGN_DEFAULTS,
        )
    with pytest.raises(ValueError, match=r"batch sizes do not match \(head_image has 3, head_layout has 2\)"):
        node.execute(
            head_image=torch.rand(3, *SIZE, 3),
            head_layout=pair.head_layout,
            body_layout=pair.body_layout,
            **ALIGN_DEFAULTS,
        )
    with pytest.raises(ValueError, match="mode 'keypoints' needs both head_pose and body_pose"):
        node.execute(
            head_image=photos(pair.head),
            head_layout=pair.head_layout,
            body_layout=pair.body_layout,
            **{**ALIGN_DEFAULTS, "mode": "keypoints"},
        )


def test_inpaint_backend_is_checked(pack_nodes):
    layout = SemanticLayout(torch.zeros(1, 4, 4, dtype=torch.int64), CANONICAL)
    with pytest.raises(ValueError, match=r"backend must be one of \[.auto., .heuristic., .generator.\], got .model."):
        pack_nodes["HeadSwapLayoutInpaint"].execute(layout=layout, backend="model")
    same, filled = pack_nodes["HeadSwapLayoutInpaint"].execute(layout=layout, backend="heuristic").result
    assert torch.equal(same.labels, layout.labels) and not bool(filled.any())
