"""Neck alignment: the similarity that puts the head source's neck onto the body source's neck.

docs/method.md §4. The paper confirms that a "neck alignment" step exists but publishes no algorithm; the
measurements, the two estimation modes and the clamps here are the project's [PROPOSAL]:

* mode ``layout`` (A): from the two layouts, by the **face**. The visible neck is unreliable in photos
  in the wild (hair over one side, collars, scarves) and its width relative to the face differs between
  people (about 0.4–0.6), so the scale is the ratio of the face widths across the cheeks (read from the
  free side of the face's axis where hair covers one cheek), refined to the ratio of the face areas
  where the two agree; the chin point (on the face's axis, on the chin line) of the head goes onto the
  body's. Face heights and, where both necks are visible, neck widths are cross-checks: they never
  decide, and a disagreement is reported. Of several face-labelled regions the largest is the face.
* mode ``keypoints`` (B): from OpenPose body keypoints (COCO-18 or BODY_25): scale = ratio of shoulder
  widths, the head's neck keypoint lands on the body's.
* mode ``none``: identity (pre-aligned pairs); different canvas sizes are fitted by height.

Conventions: pixel centres at integer coordinates, x right, y down. A transform maps head-image pixel
coordinates to body-canvas pixel coordinates, ``p' = s·R·p + t``. Rotations are reported in degrees
counter-clockwise on screen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import kornia
import numpy as np
import torch

from .batching import common_batch_size
from .labels import UNKNOWN
from .layout import SemanticLayout
from .log import logger
from .morphology import as_numpy
from .neck_geometry import MIN_FACE_PIXELS, SIMILAR_FACE_RATIO, NeckGeometry, measure_neck, measure_upright

MODES = ("auto", "layout", "keypoints", "none")
AREA_AGREEMENT = 0.04  # face-area and face-width ratios this close: the (sub-pixel) area ratio is used
NECK_RATIO_AGREEMENT = 0.08  # neck/face width ratios of the two people this close: the necks agree
HEIGHT_AGREEMENT = 0.12  # face-height ratio this far from the scale: reported (fringe, hat, face shape)
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

    def warnings(self) -> list[str]:
        """Everything about these transforms that changed the result against the estimate, one line each
        (a clamped scale, a face moved back onto the canvas, a face chosen among several)."""
        lines = []
        for i, d in enumerate(self.details):
            lines += [f"image {i}: {w}" for w in d.get("warnings", ())]
            if d.get("moved_onto_canvas"):
                dx, dy = d["moved_onto_canvas"]
                lines.append(f"image {i}: the aligned face would leave the canvas; moved by ({dx:+.1f}, {dy:+.1f}) px")
        return lines

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
            for check in d.get("cross_checks", ()):
                line += f"; {check}"
            if d.get("note"):
                line += f"; {d['note']}"
            for warning in d.get("warnings", ()):
                line += f"; WARNING: {warning}"
            lines.append(line)
        return "\n".join(lines)


def similarity(scale: float, angle: float, translation: Sequence[float]) -> torch.Tensor:
    """(2,3) float64 ``[s·R(angle) | t]``; ``angle`` in radians in the (x, y-down) frame."""
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    return torch.tensor([[cos, -sin, translation[0]], [sin, cos, translation[1]]], dtype=torch.float64)


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
    scale_min: float = 0.5  # relative to the ratio of the face sizes (body / head); canvas sizes without faces
    scale_max: float = 2.0
    max_rotation: float = 0.0  # degrees; 0 = no rotation
    scale_nudge: float = 1.0  # multiplies the estimated scale, about the anchor
    offset: tuple[float, float] = (0.0, 0.0)  # body pixels, added last


def _no_face_error(source: str, index: int, why: str, pixels: float = 0.0) -> ValueError:
    if pixels > 0:
        return ValueError(
            f"{source}: image {index}: the face is {int(pixels)} pixels, fewer than the {MIN_FACE_PIXELS} the layout "
            f"stages need to measure a face (chin line, cheek width); {why}. Use a closer crop of this person "
            f"(or a larger image), or mode 'keypoints' (pose keypoints) or 'none' (pre-aligned pairs)"
        )
    return ValueError(
        f"{source}: image {index} has no face ({why}); neck alignment needs the face class to find the chin. "
        f"Check that the layout comes from a face parser for this image and uses the right label set, or "
        f"use mode 'keypoints' (pose keypoints) or 'none' (pre-aligned pairs), which need no face"
    )


def face_choice_warning(source: str, index: int, geometry: NeckGeometry, item: int) -> str | None:
    """A warning when a second face in one photo is of similar size to the one used (the choice may be wrong)."""
    main, other = float(geometry.face_pixels[item]), float(geometry.other_face_pixels[item])
    if main <= 0 or other < SIMILAR_FACE_RATIO * main:
        return None
    mx, my = geometry.face_center[item].tolist()
    ox, oy = geometry.other_face_center[item].tolist()
    return (
        f"{source} image {index} has two faces of similar size ({int(main)} and {int(other)} px); used the larger "
        f"one at ({mx:.0f}, {my:.0f}), not the one at ({ox:.0f}, {oy:.0f}). To use the other person, crop the "
        f"photo to them or draw the layout (Load Layout)"
    )


def face_scale(head: NeckGeometry, h: int, body: NeckGeometry, b: int) -> tuple[float, str, list[str]]:
    """Scale of the head onto the body from the two faces (docs/method.md §4, mode A): the cue that decided and
    the cross-checks that disagree with it."""
    by_width = float(body.face_width[b] / head.face_width[h])
    by_area = math.sqrt(float(body.face_pixels[b] / head.face_pixels[h]))
    one_sided = [n for n, g, i in (("head", head, h), ("body", body, b)) if bool(g.face_width_one_sided[i])]
    checks = []
    # a width is read to about a pixel: small faces get a wider tolerance
    pixel = 1.0 / float(min(head.face_width[h], body.face_width[b]))
    if abs(by_area / by_width - 1) <= max(AREA_AGREEMENT, 2.5 * pixel) and not one_sided:
        scale, cue = by_area, "face sizes"
    else:
        scale, cue = by_width, "face widths"
        if one_sided:
            checks.append(f"{' and '.join(one_sided)} face width read from one side (hair over a cheek)")
    by_height = float(body.face_height[b] / head.face_height[h])
    if abs(by_height / scale - 1) > HEIGHT_AGREEMENT:
        checks.append(f"face heights suggest scale {by_height:.3f} (fringe, hat or another face shape), not used")
    if bool(head.has_neck[h]) and bool(body.has_neck[b]):
        ratio_h = float(head.neck_width[h] / head.face_width[h])
        ratio_b = float(body.neck_width[b] / body.face_width[b])
        by_neck = float(body.neck_width[b] / head.neck_width[h])
        neck_pixel = 1.0 / float(min(head.neck_width[h], body.neck_width[b]))
        if abs(ratio_b / ratio_h - 1) <= max(NECK_RATIO_AGREEMENT, 2.5 * (pixel + neck_pixel)):
            checks.append(f"neck widths agree (scale {by_neck:.3f})")
        else:
            checks.append(
                f"neck widths disagree: neck/face {ratio_h:.2f} (head) vs {ratio_b:.2f} (body), scale by necks "
                f"{by_neck:.3f}, not used"
            )
    return scale, cue, checks


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
            raise _no_face_error("head_layout", h, "no face pixels, nothing to align", float(head_geo.face_pixels[h]))
        if mode == "layout" and not bool(body_geo.has_face[b]):
            raise _no_face_error(
                "body_layout",
                b,
                "the new head is placed where the body's own head was",
                float(body_geo.face_pixels[b]),
            )
        faces_measured = has_face and bool(body_geo.has_face[b])
        reference = canvas_ratio
        if faces_measured:
            reference = float(body_geo.face_width[b] / head_geo.face_width[h])
        warnings = [
            w
            for w in (
                face_choice_warning("head_layout", h, head_geo, h),
                face_choice_warning("body_layout", b, body_geo, b),
            )
            if w
        ]
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
            checks: list[str] = []
            if mode == "layout":
                # the chin point: on the face's axis and on the chin line
                anchor_h = head_geo.chin[h].tolist()
                anchor_b = body_geo.chin[b].tolist()
                scale, estimate, checks = face_scale(head_geo, h, body_geo, b)
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
            detail = {"mode": mode, "estimate": estimate, "cross_checks": checks}
            if options.max_rotation > 0:
                estimated = tilts[1] - tilts[0]
                estimated = (estimated + math.pi) % (2 * math.pi) - math.pi
                limit = math.radians(options.max_rotation)
                angle = max(-limit, min(limit, estimated))
                if angle != estimated:
                    detail.update(rotation_clamped=True, rotation_estimated=-math.degrees(estimated))
            low, high = options.scale_min * reference, options.scale_max * reference
            if not low <= scale <= high:
                clamped = min(max(scale, low), high)
                detail.update(scale_estimated=scale, scale_clamped=clamped)
                what = "face-width ratio" if faces_measured else "canvas ratio"
                warnings.append(
                    f"estimated scale {scale:.3f} is outside {low:.3f}..{high:.3f} (scale_min/scale_max × {what} "
                    f"{reference:.3f}); clamped to {clamped:.3f}"
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
        if warnings:
            detail["warnings"] = tuple(warnings)
            for warning in warnings:
                logger.warning("HeadSwapNeckAlign: image %d: %s", i, warning)
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
