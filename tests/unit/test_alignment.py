"""Neck alignment recovers known transforms of procedurally drawn figures (docs/method.md §4 tests)."""

import logging
import math

import pytest
import torch

from comfyui_hs_diffusion.hs_models.alignment import (
    AlignmentOptions,
    HeadTransform,
    estimate_alignment,
    measure_neck,
    pose_points,
    warp_head,
    warp_image,
)
from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
from comfyui_hs_diffusion.hs_models.synthetic import HalfBodyFigure, Placement, draw_half_body, random_figure
from hs_testing.layouts import apply, photos, same_person_pairs, stack, true_transform

LAYOUT = AlignmentOptions(mode="layout")


def random_cases(n: int, seed: int, **figure_overrides):
    g = torch.Generator().manual_seed(seed)
    figures, placements = [], []
    for _ in range(n):
        figures.append(random_figure(g, **figure_overrides))
        scale = 0.8 + 0.45 * float(torch.rand((), generator=g))
        shift = (float(torch.rand((), generator=g)) * 80 - 40, float(torch.rand((), generator=g)) * 80 - 40)
        placements.append(Placement(scale=scale, shift=shift))
    return figures, placements


def face_points(drawn, figure) -> torch.Tensor:
    """The chin, the face centre and the four corners of the face box, in the drawn canvas."""
    cx, cy = figure.face_center
    a, b = figure.face_axes
    ref = torch.tensor(
        [[cx, cy + b], [cx, cy], [cx - a, cy - b], [cx + a, cy - b], [cx - a, cy + b], [cx + a, cy + b]],
        dtype=torch.float64,
    )
    return apply(drawn.matrix, ref)


def assert_recovered(transform: HeadTransform, pair, figures, px: float = 1.0, rel_scale: float = 0.02):
    for i, figure in enumerate(figures):
        truth = true_transform(pair.head[i], pair.body[i])
        points = face_points(pair.head[i], figure)
        error = (transform.apply(points[None].expand(transform.batch_size, -1, -1))[i] - apply(truth, points)).norm(
            dim=1
        )
        assert float(error.max()) <= px, (i, error.tolist())
        true_scale = math.sqrt(float(torch.linalg.det(truth[:, :2])))
        assert abs(float(transform.scales[i]) / true_scale - 1) <= rel_scale, (i, transform.describe())


@pytest.mark.parametrize("label_set", [CANONICAL, PAPER5], ids=lambda s: s.name)
def test_known_shift_and_scale_are_recovered_within_1px_and_2_percent(label_set):
    figures, placements = random_cases(10, seed=11)
    pair = same_person_pairs(figures, placements, label_set=label_set)
    transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    assert transform.batch_size == 10
    assert all(d["estimate"] == "neck widths" for d in transform.details)
    assert_recovered(transform, pair, figures)


def test_different_canvas_sizes_and_long_hair():
    figures, placements = random_cases(6, seed=12, long_hair=70.0, hat=True)
    pair = same_person_pairs(figures, placements, head_size=(600, 480), body_size=(512, 512))
    transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    assert transform.head_size == (600, 480) and transform.body_size == (512, 512)
    assert_recovered(transform, pair, figures)


def test_hidden_necks_fall_back_to_face_widths():
    figures, placements = random_cases(4, seed=13, neck_cover="clothes")
    pair = same_person_pairs(figures, placements)
    geometry = measure_neck(pair.head_layout)
    assert not geometry.has_neck.any() and geometry.has_face.all()
    transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    assert all(d["estimate"] == "face widths" for d in transform.details)
    assert_recovered(transform, pair, figures, px=1.5)


def test_rotation_is_recovered_when_allowed_and_clamped():
    figures, _ = random_cases(3, seed=14)
    angles = [6.0, -9.0, 12.0]
    pair = same_person_pairs(
        figures,
        [Placement(scale=1.1, rotation=-a / 2, shift=(8, -15)) for a in angles],
        [Placement(rotation=a / 2) for a in angles],
    )
    transform = estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="layout", max_rotation=20))
    for i, angle in enumerate(angles):
        assert abs(transform.details[i]["rotation"] - angle) < 0.5, transform.describe()
    assert_recovered(transform, pair, figures, px=1.5)
    clamped = estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="layout", max_rotation=5))
    assert [round(d["rotation"], 6) for d in clamped.details] == [5.0, -5.0, 5.0]
    assert "clamped" in clamped.describe()
    upright = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    assert all(d["rotation"] == 0 for d in upright.details)
    assert torch.allclose(upright.matrix[:, 0, 1], torch.zeros(3, dtype=torch.float64))


def pose_of(drawn, normalised=False, nested=False, extra_people=()):
    keypoints = drawn.keypoints.clone()
    height, width = drawn.labels.shape
    if normalised:
        keypoints[:, 0] /= width
        keypoints[:, 1] /= height
    flat = keypoints.tolist() if nested else keypoints.reshape(-1).tolist()
    return {"people": [*extra_people, {"pose_keypoints_2d": flat}], "canvas_width": width, "canvas_height": height}


def test_keypoints_mode_is_exact_in_every_coordinate_convention():
    figures, placements = random_cases(3, seed=15)
    pair = same_person_pairs(figures, placements, head_size=(600, 480))
    small = {"pose_keypoints_2d": [0.0] * 3 + [10, 10, 1, 12, 10, 1] + [0.0] * 6 + [14, 10, 1] + [0.0] * 36}
    head_pose = [pose_of(pair.head[0]), pose_of(pair.head[1], normalised=True), pose_of(pair.head[2], nested=True)]
    body_pose = [pose_of(b, extra_people=[small]) for b in pair.body]
    options = AlignmentOptions(mode="keypoints", max_rotation=10)
    transform = estimate_alignment(pair.head_layout, pair.body_layout, options, head_pose, body_pose)
    for i in range(3):
        assert torch.allclose(transform.matrix[i], true_transform(pair.head[i], pair.body[i]), atol=1e-4)
        assert transform.details[i]["estimate"] == "shoulder widths"


def test_auto_mode_uses_keypoints_only_where_complete():
    figures, placements = random_cases(2, seed=16)
    pair = same_person_pairs(figures, placements)
    body_pose = [pose_of(pair.body[0]), {"people": []}]
    head_pose = [pose_of(h) for h in pair.head]
    transform = estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(), head_pose, body_pose)
    assert transform.details[0]["mode"] == "keypoints"
    assert transform.details[1]["mode"] == "layout" and "keypoints incomplete" in transform.details[1]["note"]
    with pytest.raises(ValueError, match=r"body_pose: image 1 has no person with neck and both shoulder keypoints"):
        estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="keypoints"), head_pose, body_pose)
    with pytest.raises(ValueError, match="mode 'keypoints' needs both head_pose and body_pose, but head_pose is not"):
        estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="keypoints"), None, body_pose)


def test_bad_pose_data_is_named():
    with pytest.raises(ValueError, match="head_pose: expected POSE_KEYPOINT data"):
        pose_points("nonsense", 1, (64, 64), "head_pose")
    with pytest.raises(ValueError, match="body_pose: 2 pose frames for a batch of 3 images"):
        pose_points([{"people": []}] * 2, 3, (64, 64), "body_pose")
    with pytest.raises(ValueError, match="pose_keypoints_2d of length 7"):
        pose_points([{"people": [{"pose_keypoints_2d": [1.0] * 7}]}], 1, (64, 64), "body_pose")
    # a pose estimated at another resolution is rescaled to the image
    frame = {"people": [{"pose_keypoints_2d": [0, 0, 0, 50, 40, 1, 30, 40, 1, 0, 0, 0, 0, 0, 0, 70, 40, 1]}]}
    points = pose_points([{**frame, "canvas_width": 100, "canvas_height": 80}], 1, (160, 200), "p")[0]
    assert points[1] == (100.0, 80.0) and points[5] == (140.0, 80.0)


def test_a_layout_without_a_face_is_an_error_naming_input_and_image():
    figures, placements = random_cases(3, seed=17)
    pair = same_person_pairs(figures, placements)
    faceless = pair.head_layout.labels.clone()
    faceless[2][faceless[2] == CANONICAL.index("face")] = CANONICAL.index("hair")
    with pytest.raises(ValueError, match=r"head_layout: image 2 has no face"):
        estimate_alignment(SemanticLayout(faceless, CANONICAL), pair.body_layout, LAYOUT)
    with pytest.raises(ValueError, match=r"body_layout: image 2 has no face"):
        estimate_alignment(pair.body_layout, SemanticLayout(faceless, CANONICAL), LAYOUT)


def test_modes_none_and_keypoints_need_no_face_on_the_head():
    """A head seen from behind (hair, no face) can still be placed: the error's advice must hold."""
    figures, placements = random_cases(2, seed=17)
    pair = same_person_pairs(figures, placements)
    faceless = pair.head_layout.labels.clone()
    faceless[faceless == CANONICAL.index("face")] = CANONICAL.index("hair")
    head = SemanticLayout(faceless, CANONICAL)
    with pytest.raises(ValueError, match=r"use mode 'keypoints' \(pose keypoints\) or 'none'"):
        estimate_alignment(head, pair.body_layout, LAYOUT)
    with_face = estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="none"))
    without = estimate_alignment(head, pair.body_layout, AlignmentOptions(mode="none"))
    assert torch.equal(without.matrix, with_face.matrix)
    # nudges still act (about the photo's centre instead of the chin)
    nudged = estimate_alignment(head, pair.body_layout, AlignmentOptions(mode="none", scale_nudge=1.2))
    assert torch.allclose(nudged.scales, without.scales * 1.2)
    head_pose = [pose_of(h) for h in pair.head]
    body_pose = [pose_of(b) for b in pair.body]
    options = AlignmentOptions(mode="keypoints")
    by_points = estimate_alignment(head, pair.body_layout, options, head_pose, body_pose)
    for i in range(2):
        assert torch.allclose(by_points.matrix[i], true_transform(pair.head[i], pair.body[i]), atol=1e-4)


def test_batches_broadcast_from_one_and_refuse_other_mismatches():
    figures, placements = random_cases(3, seed=18)
    pair = same_person_pairs([figures[0]] * 3, [placements[0]] * 3, [Placement(shift=(s, 0)) for s in (0, 10, 20)])
    one_head = stack(pair.head[:1])
    transform = estimate_alignment(one_head, pair.body_layout, LAYOUT)
    assert transform.batch_size == 3
    assert torch.allclose(transform.matrix[1, :, 2] - transform.matrix[0, :, 2], torch.tensor([10.0, 0.0]).double())
    with pytest.raises(ValueError, match=r"batch sizes do not match \(head_layout has 2, body_layout has 3\)"):
        estimate_alignment(stack(pair.head[:2]), pair.body_layout, LAYOUT)


def test_scale_is_clamped_and_reported(caplog):
    figure = HalfBodyFigure()
    pair = same_person_pairs([figure], [Placement(scale=0.4)], [Placement()])  # the body's head is 2.5× bigger
    with caplog.at_level(logging.WARNING, logger="comfyui_hs_diffusion"):
        transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    assert abs(float(transform.scales[0]) - 2.0) < 1e-9
    assert "clamped to 2.0000" in transform.describe()
    assert "estimated scale 2.50" in caplog.text and "clamped to 2.000" in caplog.text
    # relative to the canvas ratio: the same figure on a canvas twice as large is not clamped
    pair = same_person_pairs([figure], [Placement(scale=0.4)], [Placement(scale=1.0)], body_size=(1024, 1024))
    relaxed = estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="layout", scale_max=2.5))
    assert "clamped" not in relaxed.describe()
    with pytest.raises(ValueError, match=r"scale_min \(3.0\) must be positive and at most scale_max \(2.0\)"):
        estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(scale_min=3.0))


def test_nudges_scale_about_the_neck_and_then_offset():
    figures, placements = random_cases(1, seed=19)
    pair = same_person_pairs(figures, placements)
    plain = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    nudged = estimate_alignment(
        pair.head_layout, pair.body_layout, AlignmentOptions(mode="layout", scale_nudge=1.1, offset=(5.0, -3.0))
    )
    assert abs(float(nudged.scales[0] / plain.scales[0]) - 1.1) < 1e-9
    anchor = measure_neck(pair.head_layout).anchor
    moved = nudged.apply(anchor[None]) - plain.apply(anchor[None])
    assert torch.allclose(moved[0, 0], torch.tensor([5.0, -3.0], dtype=torch.float64), atol=1e-9)


def test_a_face_pushed_off_the_canvas_is_moved_back_and_logged(caplog):
    figures, placements = random_cases(1, seed=20)
    pair = same_person_pairs(figures, placements)
    with caplog.at_level(logging.WARNING, logger="comfyui_hs_diffusion"):
        transform = estimate_alignment(
            pair.head_layout, pair.body_layout, AlignmentOptions(mode="layout", offset=(0.0, -400.0))
        )
    assert "would leave the 512×512 canvas" in caplog.text
    assert "to keep the face on the canvas" in transform.describe()
    box = measure_neck(pair.head_layout).face_box[0]
    corners = torch.tensor([[box[0], box[1]], [box[2], box[3]]])
    warped = transform.apply(corners[None])[0]
    assert float(warped[:, 1].min()) >= -0.5 - 1e-9  # the face's top edge is on the canvas again


def test_inverse_and_mode_none():
    figures, placements = random_cases(2, seed=21)
    pair = same_person_pairs(figures, placements, head_size=(600, 480))
    transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    points = torch.rand(2, 5, 2, dtype=torch.float64) * 400
    assert torch.allclose(transform.inverse().apply(transform.apply(points)), points, atol=1e-9)
    assert transform.inverse().head_size == (512, 512)
    assert transform.inverse().describe().startswith("image 0: inverse of layout, scale ")
    none = estimate_alignment(pair.head_layout, pair.body_layout, AlignmentOptions(mode="none"))
    # fitted by height: 600 → 512, centred horizontally
    assert abs(float(none.scales[0]) - 512 / 600) < 1e-12
    corners = torch.tensor([[-0.5, -0.5], [479.5, 599.5]], dtype=torch.float64)
    mapped = none.apply(corners[None])[0]
    assert torch.allclose(mapped[:, 1], torch.tensor([-0.5, 511.5], dtype=torch.float64))
    assert abs(float(mapped[0, 0] + mapped[1, 0]) / 2 - 255.5) < 1e-9


def test_warp_puts_head_layout_and_image_on_the_body_canvas():
    figures, placements = random_cases(2, seed=22)
    pair = same_person_pairs(figures, placements, head_size=(560, 480))
    transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    warped = warp_head(photos(pair.head), pair.head_layout, transform)
    assert warped.image.shape == (2, 512, 512, 3) and warped.layout.labels.shape == (2, 512, 512)
    assert torch.equal(warped.valid.bool(), warped.layout.labels != UNKNOWN)
    head_ids = torch.tensor(CANONICAL.group_ids("head"))
    for i in range(2):
        a = torch.isin(warped.layout.labels[i], head_ids)
        b = torch.isin(pair.body[i].labels, head_ids)
        assert (a & b).sum() / (a | b).sum() > 0.97  # the same head lands on the body's head
    # the image moves with the layout: away from label edges it matches a direct rendering
    expected = photos(pair.body)
    same = warped.layout.labels == pair.body_layout.labels
    interior = -torch.nn.functional.max_pool2d(-same[:, None].float(), 5, stride=1, padding=2)[:, 0] > 0
    difference = (warped.image - expected).abs().amax(-1)[interior & warped.valid.bool()]
    assert float(difference.median()) < 0.01 and float(difference.quantile(0.99)) < 0.05
    # identity fast path: same canvas, identity transform
    identity = HeadTransform(torch.eye(2, 3, dtype=torch.float64)[None], (512, 512), (512, 512), ({},))
    body_photo = photos(pair.body[:1])
    same_canvas = warp_head(body_photo, stack(pair.body[:1]), identity)
    assert torch.equal(same_canvas.image, body_photo) and same_canvas.valid.all()


@pytest.mark.parametrize("scale", [1.0, 1.37])
def test_the_warped_head_has_no_dark_rim_inside_its_valid_region(scale):
    """Bilinear samples along the head photo's border mix in the zero padding: they must not count as valid."""
    white = torch.ones(1, 100, 80, 3)
    labels = torch.full((1, 100, 80), CANONICAL.index("hair"))
    matrix = torch.tensor([[[scale, 0.0, 60.3], [0.0, scale, 40.6]]], dtype=torch.float64)
    warped = warp_head(white, SemanticLayout(labels, CANONICAL), HeadTransform(matrix, (100, 80), (200, 200), ({},)))
    valid = warped.valid.bool()
    assert int(valid.sum()) > 0.9 * 80 * 100 * scale**2
    assert float(warped.image[valid].min()) > 0.999 and not bool(warped.image[~valid].any())
    assert torch.equal(valid, warped.layout.labels != UNKNOWN)


def test_head_transform_describes_every_image():
    pair = same_person_pairs([HalfBodyFigure()] * 2, [Placement(scale=0.9), Placement(shift=(4, 4))])
    text = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT).describe()
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("image 0: layout (neck widths), scale 1.1")
    assert "head 512×512 → body 512×512" in lines[1]


def test_measure_neck_on_a_drawn_figure():
    drawn = draw_half_body(HalfBodyFigure(), height=512, width=512)
    geometry = measure_neck(SemanticLayout(drawn.labels[None], CANONICAL))
    assert bool(geometry.has_face[0]) and bool(geometry.has_neck[0])
    assert abs(float(geometry.chin[0, 1]) - drawn.chin[1]) < 0.5
    assert abs(float(geometry.anchor[0, 0]) - drawn.chin[0]) < 0.5
    assert abs(float(geometry.face_width[0]) - drawn.face_width) <= 2
    # the measured width is taken just under the chin, where the neck flares little
    assert 1.0 <= float(geometry.neck_width[0]) / drawn.neck_top_width <= 1.12


def test_the_inverse_transform_maps_the_aligned_head_back_onto_its_photo():
    figures, placements = random_cases(2, seed=23)
    pair = same_person_pairs(figures, placements, head_size=(560, 480))
    transform = estimate_alignment(pair.head_layout, pair.body_layout, LAYOUT)
    head_photo = photos(pair.head)
    on_body, covered = warp_image(head_photo, transform)
    assert on_body.shape == (2, 512, 512, 3) and covered.shape == (2, 512, 512)
    back, valid = warp_image(on_body, transform.inverse())
    assert back.shape == head_photo.shape
    # away from the borders of what made the round trip, the photo comes back up to interpolation error
    inner = -torch.nn.functional.max_pool2d(-valid[:, None], 7, stride=1, padding=3)[:, 0] > 0
    difference = (back - head_photo).abs().amax(-1)[inner]
    assert int(inner.sum()) > 50_000 and float(difference.median()) < 0.01
    with pytest.raises(ValueError, match=r"image is 512×512 but the transform starts from a 480×560 canvas"):
        warp_image(torch.rand(1, 512, 512, 3), transform)
