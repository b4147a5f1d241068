"""Face and neck measurements of a semantic layout: chin, face size and axis, neck width (docs/method.md §4).

Shared by neck alignment (where to put the new head and how big) and the weight-free layout inpainter
(where to draw the new neck). The paper publishes no measurement rules; these are the project's
[PROPOSAL]: the chin is the lowest face row within the central half of the face, the neck width a
robust mean of the per-row neck widths just under the chin, the face's tilt the long axis of its second
moments.

Conventions: pixel centres at integer coordinates, x right, y down.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from .layout import SemanticLayout
from .morphology import as_numpy, class_mask_np, first_true_np, last_true_np

NECK_FALLBACK_RATIO = 0.45  # neck width / face width when the neck is hidden (docs/method.md §4)
MIN_FACE_PIXELS = 100  # about 11×11 px: below this the chin fit and the widths are too coarse to align by
SIMILAR_FACE_RATIO = 0.5  # a second face at least this fraction of the main face's area makes the choice uncertain


def _rotation(angle: float) -> np.ndarray:
    """(2,2) rotation by ``angle`` radians in the (x, y-down) frame."""
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


@dataclass(frozen=True)
class NeckGeometry:
    """Per-image measurements of a layout; every field is a (B,) or (B,k) float64/bool tensor."""

    has_face: torch.Tensor  # the main face is large enough to measure (MIN_FACE_PIXELS)
    has_neck: torch.Tensor  # a neck is visible right under the chin
    face_pixels: torch.Tensor  # (B,) area of the main face (the largest face-labelled component)
    other_face_pixels: torch.Tensor  # (B,) area of the next largest face component (0 if none)
    other_face_center: torch.Tensor  # (B,2) its centroid (NaN if none)
    face_width: torch.Tensor  # across the cheeks: robust widest rows; from the free side where hair covers one
    face_width_one_sided: torch.Tensor  # (B,) bool: the width was read from one side of the face's axis
    face_height: torch.Tensor  # chin line to the top of the face
    face_center: torch.Tensor  # (B,2) centroid of the face
    face_box: torch.Tensor  # (B,4) x0, y0, x1, y1 at pixel edges
    face_bottom: torch.Tensor  # (B,W) lowest face row of every column, -1 where the column has no face
    chin_row: torch.Tensor  # lowest face row within the central half of the face
    chin: torch.Tensor  # (B,2) face centre x near the chin, sub-pixel y of the chin's lower edge
    neck_width: torch.Tensor  # NaN where no neck is visible
    neck_center_x: torch.Tensor  # NaN where no neck is visible
    tilt: torch.Tensor  # radians from the downward vertical to the face's long axis (x, y-down frame)
    tilt_reliable: torch.Tensor  # the face is elongated enough for its axis to mean something
    anchor: torch.Tensor  # (B,2) the neck's top centre on the chin line; the chin where the neck is hidden

    @property
    def width_estimate(self) -> torch.Tensor:
        return torch.where(self.has_neck, self.neck_width, NECK_FALLBACK_RATIO * self.face_width)


def main_face_np(labels: np.ndarray, label_set) -> tuple[np.ndarray, list[list[tuple[float, float, float]]]]:
    """The main face of every image: its largest face-labelled component (a hand, a stray blob or a bystander
    labelled face is smaller). Returns the (B,H,W) bool mask and, per image, the other 8-connected face
    components as (area, centroid x, centroid y), largest first."""
    face_id = label_set.index("face")
    main = np.zeros(labels.shape, dtype=bool)
    others = []
    for i, frame in enumerate(labels):
        mask = np.ascontiguousarray(frame == face_id).view(np.uint8)
        count, components, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")
        if count > 1:
            main[i] = components == order[0]
        others.append(
            [(float(stats[k, cv2.CC_STAT_AREA]), float(centroids[k, 0]), float(centroids[k, 1])) for k in order[1:]]
        )
    return main, others


def _row_extents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leftmost and rightmost column per row of a (B,H,W) mask as float64; NaN on empty rows."""
    left = first_true_np(mask, 2).astype(np.float64)
    right = last_true_np(mask, 2).astype(np.float64)
    empty = right < 0
    left[empty] = np.nan
    right[empty] = np.nan
    return left, right


def _robust_weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean per row of (B,N) over entries within 20 % of the median (NaN entries ignored)."""
    usable = (weights > 0) & ~np.isnan(values)
    median = np.nanmedian(np.where(usable, values, np.nan), axis=-1, keepdims=True)
    keep = usable & (np.abs(values - median) <= 0.2 * np.abs(median))
    w = np.where(keep, weights, 0.0)
    return (np.where(keep, values, 0.0) * w).sum(-1) / w.sum(-1)


def _chin_line(bottoms: np.ndarray, chin_x: np.ndarray, face_width: np.ndarray, chin_row: np.ndarray) -> np.ndarray:
    """Sub-pixel y of the chin's lower edge: the top of a parabola fitted to the lower face edge of
    the central 30 % of the face's columns, kept within the last face row's pixel.

    ``bottoms`` (B,W) is the lowest face row per column (-1 if none). One column's edge is only known
    to ±0.5 px; the fit averages that over many columns, so the same face drawn at another scale or
    position yields the same chin to a fraction of a pixel.
    """
    xs = np.arange(bottoms.shape[1], dtype=np.float64)
    u = (xs[None] - chin_x[:, None]) / np.maximum(face_width, 1.0)[:, None]
    use = (np.abs(u) <= 0.15) & (bottoms >= 0)
    design = np.stack([np.ones_like(u), u, u * u], axis=-1) * use[..., None]
    target = np.where(use, bottoms + 0.5, 0.0)
    normal = design.transpose(0, 2, 1) @ design + 1e-9 * np.eye(3)
    c0, c1, c2 = np.moveaxis(np.linalg.solve(normal, design.transpose(0, 2, 1) @ target[..., None])[..., 0], -1, 0)
    u_low = np.where(use, u, np.inf).min(-1)
    u_high = np.where(use, u, -np.inf).max(-1)
    vertex = np.clip(np.where(c2 < 0, -c1 / np.minimum(2 * c2, -1e-12), u_low), u_low, u_high)
    peak = np.maximum.reduce(
        [c0 + c1 * vertex + c2 * vertex**2, c0 + c1 * u_high + c2 * u_high**2, c0 + c1 * u_low + c2 * u_low**2]
    )
    fitted = np.where((use.sum(-1) >= 5) & np.isfinite(peak), peak, chin_row + 0.5)
    return np.clip(fitted, chin_row, chin_row + 1.0)


def measure_neck(layout: SemanticLayout) -> NeckGeometry:
    """Face and neck measurements of every image of a layout (docs/method.md §4, mode A)."""
    return _measure(as_numpy(layout.labels), layout.label_set)


def _measure(labels: np.ndarray, label_set) -> NeckGeometry:
    """:func:`measure_neck` on a (B,H,W) numpy label map: a few serial passes over the pixels, the rest
    on row and column projections."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows of images without a face or neck
        return _measure_unchecked(labels, label_set)


def _measure_unchecked(labels: np.ndarray, label_set) -> NeckGeometry:
    batch, height, width = labels.shape
    ys = np.arange(height, dtype=np.float64)
    xs = np.arange(width, dtype=np.float64)

    face, others = main_face_np(labels, label_set)
    moments = [cv2.moments(frame.view(np.uint8), binaryImage=True) for frame in face]
    count = np.array([m["m00"] for m in moments])
    other_pixels = np.array([o[0][0] if o else 0.0 for o in others], dtype=np.float64)
    other_center = np.array([[o[0][1], o[0][2]] if o else [np.nan, np.nan] for o in others], dtype=np.float64)
    has_face = count >= MIN_FACE_PIXELS
    safe = np.maximum(count, 1.0)
    face_cx = np.array([m["m10"] for m in moments]) / safe
    face_cy = np.array([m["m01"] for m in moments]) / safe
    left, right = _row_extents(face)
    face_width = np.nan_to_num(np.nanquantile(right - left + 1, 0.9, axis=-1), nan=0.0)
    rows = ~np.isnan(left)
    top_row = np.where(rows, ys, np.inf).min(-1)
    bottom_row = np.where(rows, ys, -np.inf).max(-1)
    box = np.stack([np.nanmin(left, -1) - 0.5, top_row - 0.5, np.nanmax(right, -1) + 0.5, bottom_row + 0.5], axis=1)
    face_height = np.maximum(bottom_row - top_row + 1, 0.0)  # refined on the chin line below
    # The long axis of the face (second moments) gives the head's tilt.
    mu20 = np.array([m["mu20"] for m in moments]) / safe
    mu02 = np.array([m["mu02"] for m in moments]) / safe
    mu11 = np.array([m["mu11"] for m in moments]) / safe
    axis = 0.5 * np.arctan2(2 * mu11, mu20 - mu02)  # angle of the long axis from +x
    down_x, down_y = np.cos(axis), np.sin(axis)
    flip = down_y < 0
    tilt = np.arctan2(np.where(flip, down_x, -down_x), np.where(flip, -down_y, down_y))
    spread = np.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2)
    elongation = (mu20 + mu02 + spread) / np.maximum(mu20 + mu02 - spread, 1e-9)
    tilt_reliable = has_face & (elongation >= 1.15) & (np.abs(tilt) < math.radians(60))

    face_bottom = last_true_np(face, 1)  # (B,W)
    central = (np.abs(xs[None] - face_cx[:, None]) <= 0.25 * face_width[:, None]) & (face_bottom >= 0)
    chin_row = np.where(central, face_bottom, -np.inf).max(-1)
    near = central & (face_bottom >= (chin_row - np.maximum(0.1 * face_height, 1.0))[:, None])
    chin_x = (near * xs).sum(-1) / np.maximum(near.sum(-1), 1)
    chin_y = _chin_line(face_bottom, chin_x, face_width, chin_row)
    face_height = np.maximum(chin_y - (top_row - 0.5), 0.0)
    # Hair over one side of the face hides that cheek: the half-width on the face's axis (through the chin,
    # along the face's tilt) is then read from the free side. Both halves agree on an uncovered face.
    axis_x = chin_x[:, None] + (ys[None] - chin_y[:, None]) * np.tan(np.where(tilt_reliable, tilt, 0.0))[:, None]
    half = np.fmax(axis_x - left + 0.5, right + 0.5 - axis_x)
    symmetric = np.nan_to_num(2 * np.nanquantile(half, 0.9, axis=-1), nan=0.0)
    one_sided = symmetric > 1.06 * face_width
    face_width = np.where(one_sided, symmetric, face_width)

    rows_below = (ys[None] > chin_row[:, None]) & (ys[None] <= (chin_row + 1.5 * face_height)[:, None])
    cols_beside = np.abs(xs[None] - chin_x[:, None]) <= face_width[:, None]
    neck = class_mask_np(labels, label_set.group_ids("neck")) & rows_below[:, :, None] & cols_beside[:, None, :]
    n_left, n_right = _row_extents(neck)
    neck_rows = ~np.isnan(n_left)
    neck_top = np.where(neck_rows, ys, np.inf).min(-1)
    neck_bottom = np.where(neck_rows, ys, -np.inf).max(-1)
    # The band [chin, chin + h] with h = 12 % of the face height (at most half the visible neck):
    # rows weighted by how much of them lies in it, so the mean width is sub-pixel accurate.
    h = np.maximum(np.minimum(0.12 * face_height, (neck_bottom + 0.5 - chin_y) / 2), 1.0)
    overlap = np.minimum(ys[None] + 0.5, (chin_y + h)[:, None]) - np.maximum(ys[None] - 0.5, chin_y[:, None])
    weights = np.where(neck_rows, np.maximum(overlap, 0.0), 0.0)
    n_widths = np.where(weights > 0, n_right - n_left + 1, np.nan)
    neck_width = _robust_weighted_mean(n_widths, weights)
    neck_center_x = _robust_weighted_mean((n_left + n_right) / 2, weights)
    attached = (neck_top - chin_row) <= np.maximum(0.1 * face_height, 2.0)
    has_neck = (
        has_face & ((weights > 0).sum(-1) >= 2) & (neck_width >= 0.15 * face_width) & attached & ~np.isnan(neck_width)
    )

    def t(array) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    return NeckGeometry(
        has_face=t(has_face),
        has_neck=t(has_neck),
        face_pixels=t(count),
        other_face_pixels=t(other_pixels),
        other_face_center=t(other_center),
        face_width=t(face_width),
        face_width_one_sided=t(one_sided & has_face),
        face_height=t(face_height),
        face_center=t(np.stack([face_cx, face_cy], axis=1)),
        face_box=t(box),
        face_bottom=t(face_bottom.astype(np.int64)),
        chin_row=t(chin_row),
        chin=t(np.stack([chin_x, chin_y], axis=1)),
        neck_width=t(np.where(has_neck, neck_width, np.nan)),
        neck_center_x=t(np.where(has_neck, neck_center_x, np.nan)),
        tilt=t(np.where(tilt_reliable, tilt, 0.0)),
        tilt_reliable=t(tilt_reliable),
        anchor=t(np.stack([np.where(has_neck, neck_center_x, chin_x), chin_y], axis=1)),
    )


def measure_upright(layout: SemanticLayout, geometry: NeckGeometry) -> NeckGeometry:
    """Measurements of a layout turned upright about each face's centroid, with the chin, neck centre
    and face centre mapped back to the layout's own coordinates (used when rotation is allowed: the
    chin-and-neck rules of :func:`measure_neck` assume an upright head)."""
    if not bool((geometry.tilt != 0).any()):
        return geometry
    labels = as_numpy(layout.labels).astype(np.uint8)  # ids < 256, UNKNOWN = 255
    upright = np.empty_like(labels)
    turns = []
    for i, (frame, tilt, center) in enumerate(zip(labels, geometry.tilt.tolist(), geometry.face_center, strict=True)):
        turn = _rotation(-tilt)
        c = center.numpy()
        to_upright = np.concatenate([turn, (c - turn @ c)[:, None]], axis=1)
        upright[i] = cv2.warpAffine(
            frame, to_upright, (layout.width, layout.height), flags=cv2.INTER_NEAREST, borderValue=0
        )
        turns.append(turn)
    turned = _measure(upright.astype(np.int64), layout.label_set)
    back = torch.from_numpy(np.stack(turns)).transpose(1, 2)  # R(tilt)
    center = geometry.face_center

    def unturn(points: torch.Tensor) -> torch.Tensor:
        return (back @ (points - center)[..., None])[..., 0] + center

    return replace(
        geometry,
        has_neck=turned.has_neck,
        chin=unturn(turned.chin),
        neck_width=turned.neck_width,
        anchor=unturn(turned.anchor),
    )
