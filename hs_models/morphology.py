"""Batched label and binary-mask operations for the layout stages (docs/method.md §5–§7).

Layouts live on the CPU (the ``HEADSWAP_LAYOUT`` contract), so their per-pixel logic runs in numpy
and OpenCV: each operation on a label map is a single serial pass. (Hundreds of small multi-threaded
torch operations stall on every thread hand-over when the CPU is busy with anything else, which would
make these model-free stages cost a visible fraction of a sampling step.) Round (Euclidean)
structuring elements use OpenCV's exact distance transform, whose cost does not grow with the radius;
square ones (the latent-cell erosion of docs/method.md §7) use OpenCV's rectangle erosion. The image border
is never treated as background: masks are not eroded from the edge of the canvas, which is not a seam.

The functions take and return (B,H,W) numpy arrays; :func:`as_numpy` brings a CPU layout tensor there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# numpy / OpenCV
# ----------------------------------------------------------------------------------------------


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy view of a tensor (copied from other devices)."""
    return tensor.detach().cpu().numpy()


def class_mask_np(labels: np.ndarray, class_ids: Iterable[int]) -> np.ndarray:
    """Bool mask where ``labels`` is one of ``class_ids``."""
    ids = sorted({int(i) for i in class_ids})
    if not ids:
        return np.zeros(labels.shape, dtype=bool)
    if len(ids) <= 4:
        mask = labels == ids[0]
        for i in ids[1:]:
            mask |= labels == i
        return mask
    return np.isin(labels, ids)


def first_true_np(mask: np.ndarray, axis: int) -> np.ndarray:
    """Index of the first True along ``axis``; ``mask.shape[axis]`` where there is none."""
    return np.where(mask.any(axis), mask.argmax(axis), mask.shape[axis])


def last_true_np(mask: np.ndarray, axis: int) -> np.ndarray:
    """Index of the last True along ``axis``; -1 where there is none."""
    size = mask.shape[axis]
    return np.where(mask.any(axis), size - 1 - np.flip(mask, axis).argmax(axis), -1)


def _per_image(mask: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` (uint8 (H,W) 0/1 → bool (H,W)) to every image of a (B,H,W) bool mask."""
    frames = mask.astype(np.uint8)
    return np.stack([fn(np.ascontiguousarray(frame)) for frame in frames]).astype(bool)


def _distance_to_zero(frame: np.ndarray) -> np.ndarray:
    """Euclidean distance of every non-zero pixel to the nearest zero pixel (0 on zero pixels)."""
    return cv2.distanceTransform(frame, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def dilate_np(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within Euclidean ``radius`` of the mask (a round structuring element)."""
    if radius <= 0:
        return mask.copy()

    def one(frame: np.ndarray) -> np.ndarray:
        if not frame.any():
            return frame.astype(bool)
        return _distance_to_zero(1 - frame) <= radius

    return _per_image(mask, one)


def erode_np(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of the mask farther than ``radius`` from any pixel outside it (the border does not count)."""
    if radius <= 0:
        return mask.copy()

    def one(frame: np.ndarray) -> np.ndarray:
        if frame.all():
            return frame.astype(bool)
        return _distance_to_zero(frame) > radius

    return _per_image(mask, one)


def erode_square_np(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion by a (2r+1)² square: a kept pixel has its whole Chebyshev-r neighbourhood in the mask."""
    if radius <= 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    return _per_image(mask, lambda f: cv2.erode(f, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0)


def remove_small_components_np(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` pixels."""
    if min_area <= 1:
        return mask.copy()

    def one(frame: np.ndarray) -> np.ndarray:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(frame, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False  # component 0 is the background
        return keep[labels]

    return _per_image(mask, one)


def largest_component_np(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected component of each image (empty images stay empty)."""

    def one(frame: np.ndarray) -> np.ndarray:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(frame, connectivity=8)
        if count <= 1:
            return np.zeros(frame.shape, dtype=bool)
        return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))

    return _per_image(mask, one)


def nearest_label_fill_np(labels: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Every pixel gets the label of the nearest ``source`` pixel (OpenCV's labelled distance transform,
    5×5 mask); images without a source pixel are returned unchanged."""
    out = labels.copy()
    for i, (frame, src) in enumerate(zip(labels, source, strict=True)):
        if not src.any() or src.all():
            continue
        zero_where_source = np.ascontiguousarray((~src).astype(np.uint8))
        _, nearest = cv2.distanceTransformWithLabels(zero_where_source, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        # DIST_LABEL_PIXEL numbers the zero (source) pixels 1..N in row-major order.
        out[i] = frame[src][nearest - 1]
    return out
