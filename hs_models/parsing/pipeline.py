"""Face parsing of arbitrary images into canonical8 layouts (docs/method.md §3).

Every pass parses a *square box* of the image at the network's input size S: the whole image
letterboxed (padded to a square with the network's mean colour, so the aspect ratio is kept), or a
box around the head. Labels come back to image pixels by nearest-neighbour sampling.

Full-body and small-face photos [PROPOSAL]: a first pass over the whole image finds the head (the
connected hair/face/hat region with the most face pixels); a second pass parses a square of
``crop_scale`` × the head's size around it at full network resolution; its labels replace the first
pass inside that square, and everything outside (the body classes in particular) keeps the first
pass's labels.

No face [PROPOSAL]: when the face class covers less than ``MIN_FACE_FRACTION`` of an image, its head
classes (hair, face, hat) are cleared, so later stages see an empty head rather than stray specks,
and a warning is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..labels import CANONICAL
from ..log import logger

WHOLE_IMAGE = "whole image"
HEAD_CROP = "head crop"
AUTO = "auto"
MODES = (AUTO, WHOLE_IMAGE, HEAD_CROP)

# [PROPOSAL] Below this share of the image (64 px of a 512² parse) the face is treated as absent.
MIN_FACE_FRACTION = 64 / 512**2
# [PROPOSAL] Head regions under this share of the image (16 px of a 512² parse) are not cropped to.
MIN_HEAD_FRACTION = 16 / 512**2
# [PROPOSAL] "auto" parses a head crop when it is at most this fraction of the letterboxed image side,
# i.e. when the crop magnifies the head at least 1/0.6 ≈ 1.7× over the whole-image pass.
AUTO_CROP_MAX_SHARE = 0.6

HEAD_IDS = CANONICAL.group_ids("head")
FACE_ID = CANONICAL.index("face")
BACKGROUND_ID = CANONICAL.index("background")

RunNetwork = Callable[[torch.Tensor], torch.Tensor]
"""(n,3,S,S) float32 RGB in 0..1 on the CPU (possibly a strided view) → (n,S,S) int64 canonical8 labels."""


@dataclass(frozen=True)
class Box:
    """A square region of an image in pixels; it may reach beyond the image borders."""

    top: int
    left: int
    size: int


@dataclass
class ParseResult:
    labels: torch.Tensor  # (B,H,W) int64 canonical8
    no_face: list[int] = field(default_factory=list)  # indices of images without a face (head cleared)
    cropped: list[int] = field(default_factory=list)  # indices of images parsed with a head crop


def image_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Check an IMAGE batch (B,H,W,C) and return it as float32 RGB (B,H,W,3) in 0..1.

    Greyscale (C=1) is repeated; RGBA (C=4) is composited over white (transparent areas become a
    plain studio background rather than whatever colour the transparent pixels happen to hold).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image: expected an IMAGE batch of shape (B,H,W,C), got {shape}")
    b, h, w, c = images.shape
    if b == 0:
        raise ValueError("image: the batch is empty (0 images); connect a node that outputs at least one image")
    if h == 0 or w == 0:
        raise ValueError(f"image: the images are {w}×{h} pixels; face parsing needs images of at least 1×1")
    if c not in (1, 3, 4):
        raise ValueError(f"image: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {c}")
    images = images.to(torch.float32)
    if c == 1:
        return images.expand(-1, -1, -1, 3)
    if c == 4:
        alpha = images[..., 3:].clamp(0, 1)
        return images[..., :3] * alpha + (1.0 - alpha)
    return images


def letterbox_box(height: int, width: int) -> Box:
    """The square that holds the whole image centred in it."""
    size = max(height, width)
    return Box(top=-((size - height) // 2), left=-((size - width) // 2), size=size)


def _span(start: int, length: int, box_start: int, box_size: int, size: int) -> tuple[int, int, int, int]:
    """Image pixels [i0, i1) inside the box along one axis and the canvas pixels [u0, u1) they fill."""
    i0, i1 = max(start, box_start), min(start + length, box_start + box_size)
    u0 = round((i0 - box_start) * size / box_size)
    u1 = round((i1 - box_start) * size / box_size)
    return i0, i1, u0, max(u1, u0 + 1) if i1 > i0 else u0


def box_canvas(rgb: torch.Tensor, box: Box, size: int, fill: Sequence[float]) -> torch.Tensor:
    """(H,W,3) image → (3,size,size) canvas of ``box``; outside the image the canvas has the ``fill`` colour."""
    height, width = rgb.shape[:2]
    if box == Box(0, 0, size) and height == width == size:
        return rgb.permute(2, 0, 1)  # a view: torch.stack makes the one copy the batch needs
    canvas = torch.tensor(fill, dtype=torch.float32).view(3, 1, 1).repeat(1, size, size)
    y0, y1, v0, v1 = _span(0, height, box.top, box.size, size)
    x0, x1, u0, u1 = _span(0, width, box.left, box.size, size)
    if y1 <= y0 or x1 <= x0:
        return canvas
    part = rgb[y0:y1, x0:x1].permute(2, 0, 1)[None]
    if (v1 - v0, u1 - u0) != (y1 - y0, x1 - x0):
        shrink = (v1 - v0) < (y1 - y0) or (u1 - u0) < (x1 - x0)
        part = F.interpolate(part, size=(v1 - v0, u1 - u0), mode="bilinear", align_corners=False, antialias=shrink)
    canvas[:, v0:v1, u0:u1] = part[0].clamp(0, 1)
    return canvas


def _nearest_indices(i0: int, i1: int, u0: int, u1: int) -> torch.Tensor:
    """For image pixels [i0, i1) that were resized onto canvas pixels [u0, u1): the nearest canvas pixel of each."""
    centres = torch.arange(i1 - i0, dtype=torch.float64) + 0.5
    return (u0 + (centres * (u1 - u0) / (i1 - i0)).floor().long()).clamp(u0, u1 - 1)


def paste_box_labels(labels: torch.Tensor, box_labels: torch.Tensor, box: Box) -> None:
    """Write (S,S) labels of ``box`` into the (H,W) map ``labels`` where the box covers it (nearest).

    The inverse of ``box_canvas``: each image pixel takes the label of the canvas pixel it was resized to.
    """
    height, width = labels.shape
    size = box_labels.shape[-1]
    if box == Box(0, 0, size) and height == width == size:
        labels.copy_(box_labels)
        return
    y0, y1, v0, v1 = _span(0, height, box.top, box.size, size)
    x0, x1, u0, u1 = _span(0, width, box.left, box.size, size)
    if y1 <= y0 or x1 <= x0:
        return
    rows = _nearest_indices(y0, y1, v0, v1)
    cols = _nearest_indices(x0, x1, u0, u1)
    labels[y0:y1, x0:x1] = box_labels[rows][:, cols]


def head_box(labels: torch.Tensor, crop_scale: float) -> Box | None:
    """Square of ``crop_scale`` × the head's size around the main hair/face/hat region, or None.

    The main region is the connected head region with the most face pixels (the largest one if none
    has face pixels); regions under ``MIN_HEAD_FRACTION`` of the image are ignored.
    """
    head = torch.isin(labels, torch.tensor(HEAD_IDS)).numpy().astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(head, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    areas[0] = 0  # component 0 is "not head"
    if count <= 1 or areas.max() < MIN_HEAD_FRACTION * labels.numel():
        return None
    face_pixels = np.bincount(components[labels.numpy() == FACE_ID], minlength=count)
    face_pixels[0] = 0
    score = face_pixels * (labels.numel() + 1) + areas  # most face pixels first, then the largest
    x, y, w, h, _ = (int(v) for v in stats[int(np.argmax(score))])
    side = max(1, round(crop_scale * max(w, h)))
    return Box(top=round(y + h / 2 - side / 2), left=round(x + w / 2 - side / 2), size=side)


def remove_small_regions(labels: torch.Tensor, min_area: int) -> torch.Tensor:
    """(H,W) labels with every connected region (any class) under ``min_area`` pixels merged into its surroundings.

    Pixels of a removed region take the label of the nearest pixel that belongs to a kept region.
    """
    if min_area <= 1:
        return labels
    array = labels.numpy()
    small = np.zeros(array.shape, dtype=bool)
    for class_id in np.unique(array):
        mask = (array == class_id).astype(np.uint8)
        _, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        tiny = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
        tiny = tiny[tiny > 0]  # component 0 is "not this class"
        if tiny.size:
            small |= np.isin(components, tiny)
    if not small.any() or small.all():
        return labels
    nearest = ndimage.distance_transform_edt(small, return_distances=False, return_indices=True)
    filled = array[tuple(nearest)]
    return torch.from_numpy(np.ascontiguousarray(filled))


def has_face(labels: torch.Tensor) -> torch.Tensor:
    """(B,H,W) labels → (B,) bool: does the image show a face (at least ``MIN_FACE_FRACTION`` of it)?"""
    return (labels == FACE_ID).flatten(1).sum(1) >= MIN_FACE_FRACTION * labels[0].numel()


def clear_head(labels: torch.Tensor) -> None:
    labels[torch.isin(labels, torch.tensor(HEAD_IDS))] = BACKGROUND_ID


def _canvases(rgb: torch.Tensor, chunk: list[tuple[int, Box]], size: int, fill: Sequence[float]) -> torch.Tensor:
    """(n,3,S,S) canvases of a chunk; consecutive images already at S² are passed as a view, without a copy."""
    first, last = chunk[0][0], chunk[-1][0]
    identity = Box(0, 0, size)
    if rgb.shape[1] == rgb.shape[2] == size and last - first + 1 == len(chunk) and all(b == identity for _, b in chunk):
        return rgb[first : last + 1].permute(0, 3, 1, 2)
    return torch.stack([box_canvas(rgb[i], box, size, fill) for i, box in chunk])


def _run_boxes(
    rgb: torch.Tensor,
    items: list[tuple[int, Box]],
    labels: torch.Tensor,
    run_network: RunNetwork,
    size: int,
    fill: Sequence[float],
    chunk_size: int,
    on_chunk: Callable[[int], None] | None,
) -> None:
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        box_labels = run_network(_canvases(rgb, chunk, size, fill))
        for (i, box), parsed in zip(chunk, box_labels, strict=True):
            paste_box_labels(labels[i], parsed, box)
        if on_chunk is not None:
            on_chunk(len(chunk))


def parse_images(
    images: torch.Tensor,
    run_network: RunNetwork,
    *,
    input_size: int,
    fill: Sequence[float],
    mode: str = WHOLE_IMAGE,
    crop_scale: float = 1.6,
    min_region_fraction: float = 0.0,
    chunk_size: int = 4,
    on_chunk: Callable[[int], None] | None = None,
) -> ParseResult:
    """Parse an IMAGE batch (B,H,W,C) into (B,H,W) canonical8 labels.

    ``run_network`` parses canvases of ``input_size``² (see ``RunNetwork``); ``fill`` is the padding
    colour (the network's mean, i.e. zero after normalisation). ``on_chunk(n)`` is called after each
    network call with the number of canvases it parsed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if crop_scale < 1.0:
        raise ValueError(f"crop_scale must be at least 1 (the crop must hold the whole head), got {crop_scale}")
    if not 0.0 <= min_region_fraction < 1.0:
        raise ValueError(f"min_region_fraction must be in [0, 1), got {min_region_fraction}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    rgb = image_to_rgb(images)
    batch, height, width = rgb.shape[:3]
    labels = torch.empty((batch, height, width), dtype=torch.int64)
    whole = letterbox_box(height, width)
    _run_boxes(rgb, [(i, whole) for i in range(batch)], labels, run_network, input_size, fill, chunk_size, on_chunk)

    result = ParseResult(labels)
    if mode != WHOLE_IMAGE:
        crops = []
        for i in range(batch):
            box = head_box(labels[i], crop_scale)
            if box is not None and (mode == HEAD_CROP or box.size <= AUTO_CROP_MAX_SHARE * whole.size):
                crops.append((i, box))
        _run_boxes(rgb, crops, labels, run_network, input_size, fill, chunk_size, on_chunk)
        result.cropped = [i for i, _ in crops]

    min_area = round(min_region_fraction * height * width)
    if min_area > 1:
        for i in range(batch):
            labels[i] = remove_small_regions(labels[i], min_area)
    result.no_face = [i for i, face in enumerate(has_face(labels).tolist()) if not face]
    for i in result.no_face:
        clear_head(labels[i])
    if result.no_face:
        listed = ", ".join(str(i) for i in result.no_face[:8]) + (", …" if len(result.no_face) > 8 else "")
        logger.warning(
            "face parsing: no face found in image(s) %s (batch index from 0) of %d; their layouts have no head (hair, face, hat). "
            "Use photos with a visible face, or mode 'head crop' for small faces.",
            listed,
            batch,
        )
    return result
