"""Neck alignment: the similarity that puts the head source's neck onto the body source's neck.

docs/method.md §4. The paper confirms that a "neck alignment" step exists but publishes no algorithm; the
measurements, the two estimation modes and the clamps here are the project's [PROPOSAL]:

* mode ``layout`` (A): from the two layouts. The chin is the lowest face row within the central half
  of the face; the neck width is a robust mean of the per-row neck widths over the upper half of the
  neck; the anchor is the neck's top centre at the chin line. A neck hidden by hair or clothes falls
  back to 0.45 × face width and the chin point. Scale = body neck width / head neck width (face widths
  when either neck is hidden), translation puts the head's anchor on the body's anchor.
* mode ``keypoints`` (B): from OpenPose body keypoints (COCO-18 or BODY_25): scale = ratio of shoulder
  widths, the head's neck keypoint lands on the body's.
* mode ``none``: identity (pre-aligned pairs); different canvas sizes are fitted by height.

Conventions: pixel centres at integer coordinates, x right, y down. A transform maps head-image pixel
coordinates to body-canvas pixel coordinates, ``p' = s·R·p + t``. Rotations are reported in degrees
counter-clockwise on screen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
import kornia
import numpy as np
import torch

from .batching import common_batch_size
from .labels import UNKNOWN
from .layout import SemanticLayout
from .log import logger
from .morphology import as_numpy, class_mask_np, first_true_np, largest_component_np, last_true_np

MODES = ("auto", "layout", "keypoints", "none")
NECK_FALLBACK_RATIO = 0.45  # neck width / face width when the neck is hidden (docs/method.md §4)
_MIN_FACE_PIXELS = 16
_NOSE, _NECK, _RIGHT_SHOULDER, _LEFT_SHOULDER = 0, 1, 2, 5


# ----------------------------------------------------------------------------------------------
# the transform
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadTransform:
    """A batch of similarity transforms from the head image onto the body canvas.

    ``matrix`` (B,2,3) float64 maps head pixel coordinates to body pixel coordinates; ``details`` holds
    one dict per image (mode, scale, rotation, translation and any clamping) for reports.
    """

    matrix: torch.Tensor
    head_size: tuple[int, int]  # (H, W) of the source canvas
    body_size: tuple[int, int]  # (H, W) of the target canvas
    details: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def batch_size(self) -> int:
        return self.matrix.shape[0]

    def inverse(self) -> HeadTransform:
        """The body → head transform (e.g. to paste a result back onto the head photo)."""
        rot, t = self.matrix[:, :, :2], self.matrix[:, :, 2:]
        inv_rot = torch.linalg.inv(rot)
        inverse = torch.cat([inv_rot, -inv_rot @ t], dim=2)
        details = tuple({"mode": f"inverse of {d.get('mode', '?')}", "inverse_of": d} for d in self.details)
        return HeadTransform(inverse, self.body_size, self.head_size, details)

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Map (B,N,2) or (N,2) points (x, y) through the transforms."""
        batched = points if points.ndim == 3 else points[None].expand(self.batch_size, -1, -1)
        m = self.matrix.to(batched)
        return batched @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]

    @property
    def scales(self) -> torch.Tensor:
        return torch.linalg.det(self.matrix[:, :, :2]).abs().sqrt()

    def describe(self) -> str:
        """One readable line per image."""
        lines = []
        for i, d in enumerate(self.details):
            m = self.matrix[i]
            line = (
                f"image {i}: {d.get('mode', '?')}"
                + (f" ({d['estimate']})" if d.get("estimate") else "")
                + f", scale {float(self.scales[i]):.4f}, rotation {d.get('rotation', 0.0):+.2f}°, "
                f"translation ({float(m[0, 2]):+.1f}, {float(m[1, 2]):+.1f}) px, "
                f"head {self.head_size[1]}×{self.head_size[0]} → body {self.body_size[1]}×{self.body_size[0]}"
            )
            if d.get("scale_clamped"):
                line += f"; scale {d['scale_estimated']:.4f} clamped to {d['scale_clamped']:.4f}"
            if d.get("rotation_clamped"):
                line += f"; rotation {d['rotation_estimated']:+.2f}° clamped"
            if d.get("moved_onto_canvas"):
                dx, dy = d["moved_onto_canvas"]
                line += f"; moved by ({dx:+.1f}, {dy:+.1f}) px to keep the face on the canvas"
            if d.get("note"):
                line += f"; {d['note']}"
            lines.append(line)
        return "\n".join(lines)


def similarity(scale: float, angle: float, translation: Sequence[float]) -> torch.Tensor:
    """(2,3) float64 ``[s·R(angle) | t]``; ``angle`` in radians in the (x, y-down) frame."""
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    return torch.tensor([[cos, -sin, translation[0]], [sin, cos, translation[1]]], dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# layout measurements (mode A)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeckGeometry:
    """Per-image measurements of a layout; every field is a (B,) or (B,k) float64/bool tensor."""

    has_face: torch.Tensor
    has_neck: torch.Tensor  # a neck is visible right under the chin
    face_width: torch.Tensor
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

    face = largest_component_np(labels == label_set.index("face"))
    moments = [cv2.moments(frame.view(np.uint8), binaryImage=True) for frame in face]
    count = np.array([m["m00"] for m in moments])
    has_face = count >= _MIN_FACE_PIXELS
    safe = np.maximum(count, 1.0)
    face_cx = np.array([m["m10"] for m in moments]) / safe
    face_cy = np.array([m["m01"] for m in moments]) / safe
    left, right = _row_extents(face)
    face_width = np.nan_to_num(np.nanquantile(right - left + 1, 0.9, axis=-1), nan=0.0)
    rows = ~np.isnan(left)
    top_row = np.where(rows, ys, np.inf).min(-1)
    bottom_row = np.where(rows, ys, -np.inf).max(-1)
    box = np.stack([np.nanmin(left, -1) - 0.5, top_row - 0.5, np.nanmax(right, -1) + 0.5, bottom_row + 0.5], axis=1)
    face_height = np.maximum(bottom_row - top_row + 1, 0.0)
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
        face_width=t(face_width),
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
        turn = similarity(1.0, -tilt, (0.0, 0.0))[:, :2].numpy()  # R(-tilt)
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


# ----------------------------------------------------------------------------------------------
# keypoints (mode B)
# ----------------------------------------------------------------------------------------------


def pose_points(pose, batch: int, image_size: tuple[int, int], source: str) -> list[dict[int, tuple] | None]:
    """Nose, neck and shoulder keypoints per image from ComfyUI's ``POSE_KEYPOINT`` (OpenPose JSON).

    ``pose`` is a list with one frame per image (a single frame is used for every image), each
    ``{"people": [{"pose_keypoints_2d": [x, y, c, …]}], "canvas_width": W, "canvas_height": H}``.
    Coordinates may be pixels or normalised to 0..1 (both occur among pose-estimator packs); they are
    returned in pixels of ``image_size`` (H, W). Of several people the one with the widest shoulders
    is used. ``None`` for an image whose person lacks the neck or a shoulder keypoint.
    """
    frames = [pose] if isinstance(pose, dict) else pose
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise ValueError(
            f"{source}: expected POSE_KEYPOINT data (a list of OpenPose frames, each a dict with 'people'), "
            f"got {type(pose).__name__}; connect the POSE_KEYPOINT output of a pose estimator (OpenPose/DWPose)"
        )
    if len(frames) not in (1, batch):
        raise ValueError(
            f"{source}: {len(frames)} pose frames for a batch of {batch} images; give one frame per image, "
            f"or a single frame to use for every image"
        )
    height, width = image_size
    result: list[dict[int, tuple] | None] = []
    for i in range(batch):
        frame = frames[i if len(frames) == batch else 0]
        canvas_w = float(frame.get("canvas_width") or width)
        canvas_h = float(frame.get("canvas_height") or height)
        best, best_width = None, -1.0
        for person in frame.get("people") or []:
            raw = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
            if not raw:
                continue
            values = torch.tensor(raw, dtype=torch.float64).reshape(-1)
            if values.numel() % 3 or values.numel() < 3 * 6:
                raise ValueError(
                    f"{source}: frame {i} has pose_keypoints_2d of length {values.numel()}; expected x, y, "
                    f"confidence triplets of the COCO-18 or BODY_25 body model"
                )
            points = values.reshape(-1, 3)
            present = (points[:, 2] > 0) & ~((points[:, 0] == 0) & (points[:, 1] == 0))
            if not bool(present[[_NECK, _RIGHT_SHOULDER, _LEFT_SHOULDER]].all()):
                continue
            used = points[present]
            normalised = bool((used[:, :2].abs() <= 2.0).all())
            xy = (
                points[:, :2] * torch.tensor([canvas_w, canvas_h], dtype=torch.float64) if normalised else points[:, :2]
            )
            xy = xy * torch.tensor([width / canvas_w, height / canvas_h], dtype=torch.float64)
            shoulders = float((xy[_LEFT_SHOULDER] - xy[_RIGHT_SHOULDER]).norm())
            if shoulders > best_width:
                best_width = shoulders
                best = {k: (float(xy[k, 0]), float(xy[k, 1])) for k in range(len(xy)) if bool(present[k])}
        result.append(best)
    return result


# ----------------------------------------------------------------------------------------------
# estimation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignmentOptions:
    """User controls of the alignment (defaults are the project's [PROPOSAL])."""

    mode: str = "auto"
    scale_min: float = 0.5  # relative to the ratio of the canvas sizes (body / head)
    scale_max: float = 2.0
    max_rotation: float = 0.0  # degrees; 0 = no rotation
    scale_nudge: float = 1.0  # multiplies the estimated scale, about the anchor
    offset: tuple[float, float] = (0.0, 0.0)  # body pixels, added last


def _no_face_error(source: str, index: int, why: str) -> ValueError:
    return ValueError(
        f"{source}: image {index} has no face ({why}); neck alignment needs the face class to find the chin. "
        f"Check that the layout comes from a face parser for this image and uses the right label set, or "
        f"use mode 'keypoints' (pose keypoints) or 'none' (pre-aligned pairs), which need no face"
    )


def estimate_alignment(
    head_layout: SemanticLayout,
    body_layout: SemanticLayout,
    options: AlignmentOptions = AlignmentOptions(),  # noqa: B008 (immutable)
    head_pose=None,
    body_pose=None,
) -> HeadTransform:
    """Estimate the head → body transform for every image pair (batches broadcast from 1)."""
    if options.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {options.mode!r}")
    if not 0 < options.scale_min <= options.scale_max:
        raise ValueError(
            f"scale_min ({options.scale_min}) must be positive and at most scale_max ({options.scale_max})"
        )
    hb, bb = head_layout.batch_size, body_layout.batch_size
    batch = common_batch_size({"head_layout": hb, "body_layout": bb})
    head_size = (head_layout.height, head_layout.width)
    body_size = (body_layout.height, body_layout.width)
    head_geo = measure_neck(head_layout)
    body_geo = measure_neck(body_layout)
    if options.max_rotation > 0:
        head_geo = measure_upright(head_layout, head_geo)
        body_geo = measure_upright(body_layout, body_geo)
    head_kp = pose_points(head_pose, hb, head_size, "head_pose") if head_pose is not None else None
    body_kp = pose_points(body_pose, bb, body_size, "body_pose") if body_pose is not None else None
    if options.mode == "keypoints" and (head_kp is None or body_kp is None):
        missing = " and ".join(n for n, v in (("head_pose", head_kp), ("body_pose", body_kp)) if v is None)
        raise ValueError(
            f"mode 'keypoints' needs both head_pose and body_pose, but {missing} is not connected; connect the "
            f"POSE_KEYPOINT outputs of a pose estimator for both images, or use mode 'layout'"
        )
    canvas_ratio = math.sqrt(body_size[0] * body_size[1] / (head_size[0] * head_size[1]))
    matrices, details = [], []
    for i in range(batch):
        h = i if hb > 1 else 0
        b = i if bb > 1 else 0
        has_face = bool(head_geo.has_face[h])
        mode = options.mode
        kp_h = head_kp[h] if head_kp is not None else None
        kp_b = body_kp[b] if body_kp is not None else None
        note = ""
        if mode == "auto":
            mode = "keypoints" if (kp_h is not None and kp_b is not None) else "layout"
            if mode == "layout" and (head_kp is not None or body_kp is not None):
                note = "keypoints incomplete for this image, used the layouts"
        if mode == "keypoints" and (kp_h is None or kp_b is None):
            which = "head_pose" if kp_h is None else "body_pose"
            raise ValueError(
                f"{which}: image {h if kp_h is None else b} has no person with neck and both shoulder keypoints; "
                f"use mode 'auto' to fall back to the layouts for such images"
            )
        if mode == "layout" and not has_face:
            raise _no_face_error("head_layout", h, "no face pixels, nothing to align")
        if mode == "layout" and not bool(body_geo.has_face[b]):
            raise _no_face_error("body_layout", b, "the new head is placed where the body's own head was")
        if mode == "none":
            scale = body_size[0] / head_size[0]
            angle = 0.0
            shift_x = (body_size[1] - scale * head_size[1]) / 2.0
            base = similarity(scale, 0.0, (scale * 0.5 - 0.5 + shift_x, scale * 0.5 - 0.5))
            # nudges act about the chin; a head seen from behind (no face) uses the photo's centre
            anchor_h = head_geo.chin[h] if has_face else torch.tensor([head_size[1] / 2, head_size[0] / 2])
            anchor_b = (base[:, :2] @ anchor_h.to(base) + base[:, 2]).tolist()
            detail = {"mode": "none", "estimate": "", "rotation": 0.0}
            matrix = base
        else:
            if mode == "layout":
                anchor_h = head_geo.anchor[h].tolist()
                anchor_b = body_geo.anchor[b].tolist()
                if bool(head_geo.has_neck[h]) and bool(body_geo.has_neck[b]):
                    scale, estimate = float(body_geo.neck_width[b] / head_geo.neck_width[h]), "neck widths"
                else:
                    scale, estimate = float(body_geo.face_width[b] / head_geo.face_width[h]), "face widths"
                tilts = (float(head_geo.tilt[h]), float(body_geo.tilt[b]))
            else:
                anchor_h, anchor_b = kp_h[_NECK], kp_b[_NECK]
                shoulders_h = torch.tensor(kp_h[_LEFT_SHOULDER]) - torch.tensor(kp_h[_RIGHT_SHOULDER])
                shoulders_b = torch.tensor(kp_b[_LEFT_SHOULDER]) - torch.tensor(kp_b[_RIGHT_SHOULDER])
                scale, estimate = float(shoulders_b.norm() / shoulders_h.norm().clamp(min=1e-6)), "shoulder widths"
                # the angle of the shoulder line (right → left shoulder) in the (x, y-down) frame
                tilts = (
                    math.atan2(float(shoulders_h[1]), float(shoulders_h[0])),
                    math.atan2(float(shoulders_b[1]), float(shoulders_b[0])),
                )
            angle = 0.0
            detail = {"mode": mode, "estimate": estimate}
            if options.max_rotation > 0:
                estimated = tilts[1] - tilts[0]
                estimated = (estimated + math.pi) % (2 * math.pi) - math.pi
                limit = math.radians(options.max_rotation)
                angle = max(-limit, min(limit, estimated))
                if angle != estimated:
                    detail.update(rotation_clamped=True, rotation_estimated=-math.degrees(estimated))
            low, high = options.scale_min * canvas_ratio, options.scale_max * canvas_ratio
            if not low <= scale <= high:
                clamped = min(max(scale, low), high)
                detail.update(scale_estimated=scale, scale_clamped=clamped)
                logger.warning(
                    "HeadSwapNeckAlign: image %d: estimated scale %.3f is outside %.3f..%.3f (scale_min/scale_max "
                    "× canvas ratio %.3f); clamped to %.3f",
                    i,
                    scale,
                    low,
                    high,
                    canvas_ratio,
                    clamped,
                )
                scale = clamped
            rotated = similarity(scale, angle, (0.0, 0.0))[:, :2]
            t = torch.tensor(anchor_b, dtype=torch.float64) - rotated @ torch.tensor(anchor_h, dtype=torch.float64)
            matrix = torch.cat([rotated, t[:, None]], dim=1)
            detail["rotation"] = 0.0 - math.degrees(angle)  # on-screen counter-clockwise; never -0.0
        matrix = _nudge(matrix, anchor_b, options)
        if has_face:
            matrix = _keep_face_on_canvas(matrix, head_geo.face_box[h], body_size, i, detail)
        if note:
            detail["note"] = note
        matrices.append(matrix)
        details.append(detail)
    return HeadTransform(torch.stack(matrices), head_size, body_size, tuple(details))


def _nudge(matrix: torch.Tensor, anchor: Sequence[float], options: AlignmentOptions) -> torch.Tensor:
    """Scale by ``scale_nudge`` about the anchor on the body canvas, then shift by ``offset``."""
    n = options.scale_nudge
    if n <= 0:
        raise ValueError(f"scale_nudge must be positive, got {n}")
    q = torch.tensor(anchor, dtype=torch.float64)
    out = matrix.clone()
    out[:, :2] = n * matrix[:, :2]
    out[:, 2] = q + n * (matrix[:, 2] - q) + torch.tensor(options.offset, dtype=torch.float64)
    return out


def _keep_face_on_canvas(
    matrix: torch.Tensor, face_box: torch.Tensor, body_size: tuple[int, int], index: int, detail: dict
) -> torch.Tensor:
    """Shift the transform so that the warped face box lies on the canvas (centred if it is bigger)."""
    x0, y0, x1, y1 = face_box.tolist()
    corners = torch.tensor([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=torch.float64)
    warped = corners @ matrix[:, :2].T + matrix[:, 2]
    low = warped.amin(0)
    high = warped.amax(0)
    limits = torch.tensor([body_size[1], body_size[0]], dtype=torch.float64) - 0.5
    shift = torch.zeros(2, dtype=torch.float64)
    for axis in range(2):
        lo, hi, edge = float(low[axis]), float(high[axis]), float(limits[axis])
        if hi - lo > edge + 0.5:
            shift[axis] = (edge - 0.5) / 2 - (lo + hi) / 2
        elif lo < -0.5:
            shift[axis] = -0.5 - lo
        elif hi > edge:
            shift[axis] = edge - hi
    if bool((shift.abs() > 1e-9).any()):
        detail["moved_onto_canvas"] = (float(shift[0]), float(shift[1]))
        logger.warning(
            "HeadSwapNeckAlign: image %d: the aligned face would leave the %d×%d canvas; moved by (%+.1f, %+.1f) px",
            index,
            body_size[1],
            body_size[0],
            float(shift[0]),
            float(shift[1]),
        )
        matrix = matrix.clone()
        matrix[:, 2] += shift
    return matrix


# ----------------------------------------------------------------------------------------------
# warping
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarpedHead:
    image: torch.Tensor  # (B,H,W,C) float32 on the body canvas; 0 outside the valid region
    layout: SemanticLayout  # UNKNOWN outside the valid region
    valid: torch.Tensor  # (B,H,W) float32: 1 where the head image covers the canvas


def warp_head(image: torch.Tensor, layout: SemanticLayout, transform: HeadTransform) -> WarpedHead:
    """Warp a head image (bilinear) and its layout (nearest) onto the body canvas with kornia.

    ``image`` is (B,H,W,C) in ComfyUI's layout; batches of 1 broadcast over the transform's batch.
    """
    batch = transform.batch_size
    height, width = transform.body_size
    device = image.device
    matrix = transform.matrix.to(device=device, dtype=torch.float32)
    pixels = image.movedim(-1, 1).to(torch.float32)
    if pixels.shape[0] == 1 and batch > 1:
        pixels = pixels.expand(batch, -1, -1, -1)
    labels = layout.labels.to(device)
    if labels.shape[0] == 1 and batch > 1:
        labels = labels.expand(batch, -1, -1)
    identity = torch.eye(2, 3, dtype=torch.float64)
    if transform.head_size == transform.body_size and torch.equal(
        transform.matrix, identity.expand(batch, -1, -1).to(transform.matrix)
    ):
        valid = torch.ones(batch, height, width, device=device)
        return WarpedHead(
            pixels.movedim(1, -1).contiguous(), SemanticLayout(labels.cpu().clone(), layout.label_set), valid
        )
    warped, covered = warp_image(image, transform)
    # Labels are warped shifted by one, so that the zero padding marks where the head photo ends.
    shifted = _warp((labels + 1).to(torch.float32)[:, None], matrix, (height, width), "nearest")
    shifted = as_numpy(shifted[:, 0]).astype(np.int64)
    # Valid only where the bilinear image is wholly the head photo: along the photo's border it is blended
    # with the zero padding, which would paste a dark rim wherever the layout says "head".
    valid = (shifted > 0) & as_numpy(covered > 0)
    new_labels = np.where(valid, shifted - 1, UNKNOWN)
    valid_mask = torch.from_numpy(valid.astype(np.float32)).to(device)
    return WarpedHead(
        warped * valid_mask[..., None],
        SemanticLayout(torch.from_numpy(new_labels), layout.label_set),
        valid_mask,
    )


def _warp(planes: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """kornia's affine warp of (B,C,H,W) planes; ``matrix`` maps source to target pixel coordinates."""
    return kornia.geometry.transform.warp_affine(
        planes, matrix, dsize=size, mode=mode, padding_mode="zeros", align_corners=True
    )


def warp_image(
    image: torch.Tensor, transform: HeadTransform, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a (B,H,W,C) image from the transform's source canvas onto its target canvas.

    Returns the warped image (0 outside the source) and the (B,H,W) float32 mask of the pixels the
    source covers. With ``transform.inverse()`` this maps results on the body canvas back onto the
    head photo.
    """
    if tuple(image.shape[1:3]) != transform.head_size:
        raise ValueError(
            f"image is {image.shape[2]}×{image.shape[1]} but the transform starts from a "
            f"{transform.head_size[1]}×{transform.head_size[0]} canvas"
        )
    batch = transform.batch_size
    pixels = image.movedim(-1, 1).to(torch.float32)
    if pixels.shape[0] == 1 and batch > 1:
        pixels = pixels.expand(batch, -1, -1, -1)
    ones = torch.ones_like(pixels[:, :1])
    matrix = transform.matrix.to(device=image.device, dtype=torch.float32)
    warped = _warp(torch.cat([pixels, ones], dim=1), matrix, transform.body_size, mode)
    valid = warped[:, -1] > 0.999 if mode == "bilinear" else warped[:, -1] > 0.5
    return (warped[:, :-1] * valid[:, None]).movedim(1, -1).contiguous(), valid.to(torch.float32)
