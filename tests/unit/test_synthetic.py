"""The procedural half-body generator draws what its ground truth says."""

import torch
import torch.nn.functional as F

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5, convert_labels
from comfyui_hs_diffusion.hs_models.synthetic import (
    LEFT_SHOULDER,
    NECK,
    NOSE,
    RIGHT_SHOULDER,
    HalfBodyFigure,
    Placement,
    draw_half_body,
    random_figure,
    render_photo,
)

ID = {name: CANONICAL.index(name) for name in CANONICAL.class_names}


def touches(a: torch.Tensor, b: torch.Tensor) -> bool:
    grown = F.max_pool2d(a[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    return bool((grown & b).any())


def test_default_figure_has_every_part_in_place():
    drawn = draw_half_body(HalfBodyFigure(), height=512, width=512)
    labels = drawn.labels
    assert labels.shape == (512, 512) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {ID["background"], ID["hair"], ID["face"], ID["neck"], ID["clothes"]}
    face, neck, clothes = labels == ID["face"], labels == ID["neck"], labels == ID["clothes"]
    assert touches(neck, face) and touches(neck, clothes)
    # the chin landmark is the face's lowest edge
    chin_x, chin_y = drawn.chin
    assert face[int(chin_y) - 1, round(chin_x)] and not face[int(chin_y) + 1, round(chin_x)]
    # the neck width at the chin line is the ground-truth neck width (±1 px of rasterisation)
    below_chin = neck[int(chin_y) + 1]
    assert abs(int(below_chin.sum()) - drawn.neck_top_width) <= 1.5
    face_row = face[round(HalfBodyFigure().face_center[1])]
    assert abs(int(face_row.sum()) - drawn.face_width) <= 1.5


def test_placement_moves_scales_and_rotates_everything_together():
    figure = HalfBodyFigure(hat=True, long_hair=50.0)
    base = draw_half_body(figure, height=512, width=512)
    moved = draw_half_body(figure, Placement(scale=1.0, shift=(12.0, -7.0)), height=512, width=512)
    assert torch.equal(moved.labels[20:400, 12:492], base.labels[27:407, 0:480])  # moved(x, y) = base(x - 12, y + 7)
    big = draw_half_body(figure, Placement(scale=1.25), height=512, width=512)
    assert abs(big.face_width / base.face_width - 1.25) < 1e-9
    assert abs((big.labels == ID["face"]).sum() / (base.labels == ID["face"]).sum() - 1.25**2) < 0.02
    # the chin is the pivot: it stays put under scaling and rotation
    turned = draw_half_body(figure, Placement(scale=0.9, rotation=10.0), height=512, width=512)
    assert max(abs(a - b) for a, b in zip(turned.chin, base.chin, strict=True)) < 1e-9
    # keypoints ride along: the shoulder line of a 10° counter-clockwise turn rises to the right
    dx, dy = (turned.keypoints[LEFT_SHOULDER, :2] - turned.keypoints[RIGHT_SHOULDER, :2]).tolist()
    assert abs(torch.rad2deg(torch.atan2(torch.tensor(-dy), torch.tensor(dx))).item() - 10.0) < 1e-6
    assert turned.keypoints[[NOSE, NECK, RIGHT_SHOULDER, LEFT_SHOULDER], 2].eq(1).all()
    assert ID["hat"] in base.labels and touches(base.labels == ID["hair"], base.labels == ID["clothes"])


def test_neck_cover_and_paper5():
    covered = draw_half_body(HalfBodyFigure(neck_cover="clothes"), height=256, width=256)
    assert ID["neck"] not in covered.labels
    paper = draw_half_body(HalfBodyFigure(hat=True), height=256, width=256, label_set=PAPER5)
    canonical = draw_half_body(HalfBodyFigure(hat=True), height=256, width=256)
    assert paper.label_set is PAPER5
    assert torch.equal(paper.labels, convert_labels(canonical.labels[None], CANONICAL, PAPER5)[0])


def test_random_figures_are_reproducible_and_render():
    a = random_figure(torch.Generator().manual_seed(5))
    b = random_figure(torch.Generator().manual_seed(5), long_hair=30.0)
    assert a.face_axes == b.face_axes and b.long_hair == 30.0
    drawn = draw_half_body(a, height=128, width=96)
    photo = render_photo(drawn.labels, drawn.matrix)
    assert photo.shape == (128, 96, 3) and photo.dtype == torch.float32
    assert 0.0 <= float(photo.min()) and float(photo.max()) <= 1.0
