"""Batched binary-mask morphology for the layout stages (method.md §5–§7).

Masks are ``(B,H,W)`` bool tensors on any device. Round (Euclidean) structuring elements go through
OpenCV's exact distance transform on the CPU, which costs the same for any radius; square ones (the
latent-cell erosion of method.md §7) are separable max-pools in torch on the mask's own device. The
image border is never treated as background: masks are not eroded from the edge of the canvas, which
is not a seam.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def class_mask(labels: torch.Tensor, class_ids) -> torch.Tensor:
    """(B,H,W) bool: where ``labels`` (ids 0..255) is one of ``class_ids``.

    A few equality tests beat both ``torch.isin`` and a table lookup (gathers are slow on the CPU);
    longer lists use the lookup.
    """
    ids = sorted(set(int(i) for i in class_ids))
    if not ids:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    if len(ids) <= 4:
        mask = labels == ids[0]
        for i in ids[1:]:
            mask |= labels == i
        return mask
    table = torch.zeros(256, dtype=torch.bool, device=labels.device)
    table[torch.tensor(ids, dtype=torch.int64, device=labels.device)] = True
    return table[labels]


def first_true(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the first True along ``dim`` (int64); ``mask.shape[dim]`` where there is none."""
    as_bytes = mask.to(torch.uint8)
    index = as_bytes.argmax(dim)  # the first maximum
    return torch.where(as_bytes.amax(dim) > 0, index, mask.shape[dim])


def last_true(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the last True along ``dim`` (int64); -1 where there is none."""
    flipped = mask.to(torch.uint8).flip(dim)
    index = mask.shape[dim] - 1 - flipped.argmax(dim)
    return torch.where(flipped.amax(dim) > 0, index, -1)


def _per_image(mask: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply ``fn`` (uint8 (H,W) 0/1 → bool (H,W)) to every image of a (B,H,W) bool mask."""
    frames = mask.to(device="cpu", dtype=torch.uint8).numpy()
    out = np.stack([fn(np.ascontiguousarray(frame)) for frame in frames])
    return torch.from_numpy(out).to(device=mask.device, dtype=torch.bool)


def _distance_to_zero(frame: np.ndarray) -> np.ndarray:
    """Euclidean distance of every non-zero pixel to the nearest zero pixel (0 on zero pixels)."""
    return cv2.distanceTransform(frame, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def dilate(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean ``radius`` of the mask (a round structuring element)."""
    if radius <= 0:
        return mask.clone()

    def one(frame: np.ndarray) -> np.ndarray:
        if not frame.any():
            return frame.astype(bool)
        return _distance_to_zero(1 - frame) <= radius

    return _per_image(mask, one)


def erode(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels of the mask farther than ``radius`` from any pixel outside it (the border does not count)."""
    if radius <= 0:
        return mask.clone()

    def one(frame: np.ndarray) -> np.ndarray:
        if frame.all():
            return frame.astype(bool)
        return _distance_to_zero(frame) > radius

    return _per_image(mask, one)


def erode_square(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Erosion by a (2r+1)² square: a kept pixel has its whole Chebyshev-r neighbourhood in the mask.

    OpenCV's O(1)-per-pixel rectangle erosion on the CPU, separable max-pools on other devices; in
    both, pixels beyond the border never count as outside the mask.
    """
    if radius <= 0:
        return mask.clone()
    if mask.device.type != "cpu":
        return _erode_square_torch(mask, radius)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    return _per_image(
        mask, lambda frame: cv2.erode(frame, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1).astype(bool)
    )


def _erode_square_torch(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`erode_square` with max-pools (their -inf padding ignores the outside of the canvas)."""
    k = 2 * radius + 1
    outside = (~mask)[:, None].to(torch.float32)
    outside = F.max_pool2d(outside, (1, k), stride=1, padding=(0, radius))
    outside = F.max_pool2d(outside, (k, 1), stride=1, padding=(radius, 0))
    return outside[:, 0] == 0


def remove_small_components(mask: torch.Tensor, min_area: int) -> torch.Tensor:
    """Drop 8-connected components smaller than ``min_area`` pixels."""
    if min_area <= 1:
        return mask.clone()

    def one(frame: np.ndarray) -> np.ndarray:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(frame, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False  # component 0 is the background
        return keep[labels]

    return _per_image(mask, one)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Only the largest 8-connected component of each image (empty images stay empty)."""

    def one(frame: np.ndarray) -> np.ndarray:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(frame, connectivity=8)
        if count <= 1:
            return np.zeros(frame.shape, dtype=bool)
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        return labels == biggest

    return _per_image(mask, one)


def nearest_label_fill(labels: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Every pixel gets the label of the nearest pixel of ``source`` (B,H,W bool); images without a
    source pixel are returned unchanged. Uses OpenCV's labelled distance transform (5×5 mask)."""
    frames = labels.cpu().numpy()
    sources = source.to(device="cpu", dtype=torch.bool).numpy()
    out = frames.copy()
    for i, (frame, src) in enumerate(zip(frames, sources, strict=True)):
        if not src.any() or src.all():
            continue
        zero_where_source = np.ascontiguousarray((~src).astype(np.uint8))
        _, nearest = cv2.distanceTransformWithLabels(zero_where_source, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        # DIST_LABEL_PIXEL numbers the zero (source) pixels 1..N in row-major order.
        out[i] = frame[src][nearest - 1]
    return torch.from_numpy(out).to(labels.device)
