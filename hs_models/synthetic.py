"""Procedural half-body layouts with known ground truth.

A figure (head ellipse, hair, optional hat and long hair over the shoulders, neck trapezoid, clothes)
is described in a 512×512 reference frame and drawn onto any canvas through a known similarity
transform (scale and rotation about the chin, then a shift). Because every shape is an implicit
function evaluated at the pixel centres, any placement rasterises exactly, in one vectorised pass.

Used by the tests (neck alignment must recover a known shift and scale, docs/method.md §4 tests) and meant
for the layout-generator training data (docs/method.md §6.3), which needs clean layouts to corrupt.
Coordinates: pixel centres sit at integer (x, y); x to the right, y down. [PROPOSAL]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .labels import CANONICAL, LabelSet, convert_labels

# OpenPose COCO-18 / BODY_25 body keypoint indices shared by both formats.
NOSE, NECK, RIGHT_SHOULDER, LEFT_SHOULDER = 0, 1, 2, 5
NUM_POSE_KEYPOINTS = 18


@dataclass(frozen=True)
class HalfBodyFigure:
    """Proportions of one person, in pixels of the 512×512 reference frame."""

    face_center: tuple[float, float] = (256.0, 170.0)
    face_axes: tuple[float, float] = (62.0, 80.0)  # semi-axes (horizontal, vertical) of the face ellipse
    hair: float = 16.0  # hair thickness around the top of the face
    long_hair: float = 0.0  # how far hair falls below the chin, over the shoulders (0 = short hair)
    hat: bool = False
    neck_width: float = 0.5  # neck width at the chin, as a fraction of the face width
    neck_flare: float = 1.25  # neck width at the collar / neck width at the chin
    neck_length: float = 34.0  # chin to collar
    neck_cover: str | None = None  # None, "hair" or "clothes": what hides the neck
    shoulder_half_width: float = 175.0
    shoulder_slope: float = 0.35  # how fast the shoulder line drops away from the collar

    @property
    def chin(self) -> tuple[float, float]:
        return self.face_center[0], self.face_center[1] + self.face_axes[1]

    @property
    def face_width(self) -> float:
        return 2.0 * self.face_axes[0]

    @property
    def neck_top_width(self) -> float:
        return self.neck_width * self.face_width


@dataclass(frozen=True)
class Placement:
    """Similarity from the reference frame to a canvas: scale and rotate about the chin, then shift."""

    scale: float = 1.0
    rotation: float = 0.0  # degrees, counter-clockwise on screen
    shift: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class SyntheticHalfBody:
    """One drawn figure: labels and the ground truth of where everything landed on the canvas."""

    labels: torch.Tensor  # (H,W) int64 in ``label_set``
    label_set: LabelSet
    matrix: torch.Tensor  # (2,3) float64: reference frame → canvas pixel coordinates
    chin: tuple[float, float]  # the bottom of the face ellipse (= top centre of the neck)
    face_width: float
    neck_top_width: float
    keypoints: torch.Tensor  # (18,3) OpenPose COCO-18 x, y, confidence (0 where not drawn)


def placement_matrix(figure: HalfBodyFigure, placement: Placement) -> torch.Tensor:
    """(2,3) float64 matrix of the similarity reference frame → canvas."""
    s = placement.scale
    theta = math.radians(placement.rotation)
    # y points down, so a counter-clockwise turn on screen is a negative angle in (x, y).
    cos, sin = math.cos(-theta), math.sin(-theta)
    rot = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) * s
    pivot = torch.tensor(figure.chin, dtype=torch.float64)
    shift = torch.tensor(placement.shift, dtype=torch.float64)
    translation = pivot + shift - rot @ pivot
    return torch.cat([rot, translation[:, None]], dim=1)


def draw_half_body(
    figure: HalfBodyFigure,
    placement: Placement = Placement(),  # noqa: B008 (immutable)
    height: int = 512,
    width: int = 512,
    label_set: LabelSet = CANONICAL,
) -> SyntheticHalfBody:
    """Rasterise ``figure`` placed by ``placement`` onto an ``height``×``width`` canvas."""
    matrix = placement_matrix(figure, placement)
    rot, translation = matrix[:, :2], matrix[:, 2]
    x, y = _reference_coordinates(matrix, height, width)

    ids = {name: CANONICAL.index(name) for name in CANONICAL.class_names}
    cx, cy = figure.face_center
    a, b = figure.face_axes
    chin_y = cy + b
    collar_y = chin_y + figure.neck_length
    neck_top_half = figure.neck_top_width / 2.0
    neck_bottom_half = neck_top_half * figure.neck_flare
    dx = np.abs(x - cx)

    labels = np.full((height, width), ids["background"], dtype=np.int64)

    def paint(where: np.ndarray, name: str) -> None:
        labels[where] = ids[name]

    # Clothes: a collar line at the neck's foot, shoulders dropping away to both sides.
    shoulder_top = collar_y + figure.shoulder_slope * np.maximum(dx - neck_bottom_half, 0)
    clothes = (y >= shoulder_top) & (dx <= figure.shoulder_half_width + 0.3 * np.maximum(y - collar_y, 0))
    paint(clothes, "clothes")
    # Neck: a trapezoid from under the jaw to just below the collar line (the clothes hide its foot).
    t = np.minimum((y - chin_y) / figure.neck_length, 1.0)
    neck_half = neck_top_half + (neck_bottom_half - neck_top_half) * t
    neck = (y >= cy + 0.5 * b) & (y <= collar_y + 2.0) & (dx <= neck_half) & ~clothes
    paint(neck, figure.neck_cover or "neck")
    # Hair: a cap over the top of the face; long hair falls beside the neck over the shoulders.
    cap = ((x - cx) / (a + figure.hair)) ** 2 + ((y - cy + 0.25 * figure.hair) / (b + figure.hair)) ** 2 <= 1.0
    hair = cap & (y <= cy + 0.1 * b)
    if figure.long_hair > 0:
        hair |= (dx >= 0.62 * a) & (dx <= a + figure.hair) & (y >= cy - 0.2 * b) & (y <= chin_y + figure.long_hair)
    paint(hair, "hair")
    if figure.hat:
        paint(cap & (y <= cy - 0.55 * b), "hat")
    face = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0
    paint(face, "face")

    keypoints = torch.zeros(NUM_POSE_KEYPOINTS, 3, dtype=torch.float64)
    shoulder_dx = 0.8 * figure.shoulder_half_width
    shoulder_y = collar_y + figure.shoulder_slope * (shoulder_dx - neck_bottom_half) + 6.0
    # OpenPose "right" is the person's right: the left side of the image.
    ref_points = {
        NOSE: (cx, cy + 0.15 * b),
        RIGHT_SHOULDER: (cx - shoulder_dx, shoulder_y),
        LEFT_SHOULDER: (cx + shoulder_dx, shoulder_y),
        NECK: (cx, shoulder_y),
    }
    for index, point in ref_points.items():
        p = rot @ torch.tensor(point, dtype=torch.float64) + translation
        keypoints[index] = torch.tensor([p[0], p[1], 1.0], dtype=torch.float64)

    chin = rot @ torch.tensor(figure.chin, dtype=torch.float64) + translation
    labels = torch.from_numpy(labels)
    if label_set is not CANONICAL:
        labels = convert_labels(labels[None], CANONICAL, label_set)[0]
    return SyntheticHalfBody(
        labels=labels,
        label_set=label_set,
        matrix=matrix,
        chin=(float(chin[0]), float(chin[1])),
        face_width=figure.face_width * placement.scale,
        neck_top_width=figure.neck_top_width * placement.scale,
        keypoints=keypoints,
    )


def _reference_coordinates(matrix: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference-frame (x, y) of every pixel centre of the canvas, each (H,W) float32 numpy (plenty for
    pixels; numpy because drawing is a handful of serial passes, also inside data loaders)."""
    inverse = torch.linalg.inv(matrix[:, :2]).tolist()
    ys = (np.arange(height, dtype=np.float64)[:, None] - float(matrix[1, 2])).astype(np.float32)
    xs = (np.arange(width, dtype=np.float64)[None, :] - float(matrix[0, 2])).astype(np.float32)
    x = inverse[0][0] * xs + inverse[0][1] * ys
    y = inverse[1][0] * xs + inverse[1][1] * ys
    return x, y


def random_figure(generator: torch.Generator, **overrides) -> HalfBodyFigure:
    """A plausible random person (proportions drawn uniformly around the defaults)."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))

    figure = HalfBodyFigure(
        face_center=(uniform(236, 276), uniform(150, 185)),
        face_axes=(uniform(52, 70), uniform(70, 88)),
        hair=uniform(8, 24),
        neck_width=uniform(0.42, 0.6),
        neck_flare=uniform(1.1, 1.4),
        neck_length=uniform(26, 44),
        shoulder_half_width=uniform(150, 200),
        shoulder_slope=uniform(0.25, 0.5),
    )
    return replace(figure, **overrides)


def render_photo(labels: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """A smooth synthetic "photo" (H,W,3) float32 in 0..1 for a drawn figure.

    Colours depend on the class and on a smooth pattern fixed to the reference frame, so a correct
    warp of one placement reproduces another placement's photo up to interpolation error.
    """
    height, width = labels.shape
    x, y = _reference_coordinates(matrix, height, width)
    pattern = np.stack(
        [0.5 + 0.25 * np.sin(x / 23.0), 0.5 + 0.25 * np.cos(y / 19.0), 0.5 + 0.25 * np.sin((x + y) / 29.0)], axis=-1
    )
    base = np.linspace(0.1, 0.9, 256, dtype=np.float32)[(labels.numpy().clip(0, 255) * 37) % 256]
    return torch.from_numpy(((pattern + base[..., None]) / 2.0).astype(np.float32))
