"""Weight-free layout inpainting: fill the UNKNOWN holes of a blended layout (docs/method.md §6.4).

The paper fills the holes with a trained semantic layout generator (docs/method.md §6.1). This backend
needs no weights, so the pipeline runs before any generator is trained [PROPOSAL]:

1. a neck is drawn into the holes under the jaw: from the bottom of the face down to the first known
   body or background pixel of each column (the collar), as a trapezoid whose width is
   ``0.45 × face width`` at the chin and 1.1 times that at the collar line (docs/method.md §4, §6.4);
2. every other hole pixel takes the label of the nearest known pixel that is neither head nor neck
   (body classes or background: the body's old head area becomes background or clothes, never hair);
3. a 5×5 mode filter smooths the filled pixels (head classes do not vote: the head stays the head
   source's own).

Known labels are never changed, so everything outside the holes is exactly the blended layout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .alignment import NECK_FALLBACK_RATIO, measure_neck
from .labels import UNKNOWN
from .layout import SemanticLayout
from .log import logger
from .morphology import as_numpy, class_mask_np, first_true_np, nearest_label_fill_np

BACKENDS = ("auto", "heuristic")
NECK_FLARE = 1.1  # neck width at the collar / at the chin (docs/method.md §6.4)
MODE_FILTER_SIZE = 5


@dataclass(frozen=True)
class InpaintResult:
    layout: SemanticLayout  # no UNKNOWN left
    filled: torch.Tensor  # (B,H,W) bool: the pixels that were UNKNOWN


def _draw_neck(labels: np.ndarray, label_set, geometry) -> np.ndarray:
    batch, height, width = labels.shape
    unknown = labels == UNKNOWN
    ys = np.arange(height, dtype=np.float32)
    xs = np.arange(width, dtype=np.float32)
    has_face = geometry.has_face.numpy()
    # images without a face get harmless numbers (their neck is masked out below)
    chin_x = np.where(has_face, geometry.chin[:, 0].numpy(), 0.0).astype(np.float32)
    chin_y = np.where(has_face, geometry.chin[:, 1].numpy(), -1.0).astype(np.float32)  # lower edge of the chin
    top_half = np.where(has_face, NECK_FALLBACK_RATIO * geometry.face_width.numpy() / 2, 0.0).astype(np.float32)
    face_bottom = geometry.face_bottom.numpy()
    # Per column the neck starts under the lowest face pixel and ends at the first known pixel that is
    # body or background (the collar); head pixels in between (hair in front of the neck) are skipped.
    start = np.where(face_bottom >= 0, face_bottom, chin_y[:, None] - 0.5).astype(np.float32)
    below_start = ys[None, :, None] > start[:, None, :]
    stopper = ~unknown & ~class_mask_np(labels, label_set.group_ids("head")) & below_start
    stop = first_true_np(stopper, 1).astype(np.float32)  # (B,W); H where nothing stops the column
    in_top = np.abs(xs[None] - chin_x[:, None]) <= top_half[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns without a collar
        collar = np.nanmedian(np.where(in_top & (stop < height), stop, np.nan), axis=-1)
    face_box = geometry.face_box.numpy()
    face_height = np.where(has_face, face_box[:, 3] - face_box[:, 1], 0.0).astype(np.float32)
    collar = np.minimum(np.where(np.isnan(collar), chin_y + 0.6 * face_height, collar), height - 0.5)
    # Half-width per row: constant above the chin, widening linearly to NECK_FLARE × at the collar line.
    t = np.clip((ys[None] - chin_y[:, None]) / np.maximum(collar - chin_y, 1.0)[:, None], 0.0, 1.0)
    half = top_half[:, None] * (1.0 + (NECK_FLARE - 1.0) * t)  # (B,H)
    rows = (ys[None] <= (chin_y + 1.5 * face_height)[:, None]) & has_face[:, None]
    inside = np.abs(xs[None, None] - chin_x[:, None, None]) <= half[:, :, None]
    above_stop = ys[None, :, None] < stop[:, None, :]
    return unknown & below_start & above_stop & inside & rows[:, :, None]


def _mode_filter(labels: np.ndarray, where: np.ndarray, num_classes: int, excluded: list[int]) -> np.ndarray:
    """Replace ``labels`` at ``where`` by the most frequent label of its 5×5 window that is not one of
    ``excluded`` (UNKNOWN-free input).

    Runs on the bounding box of ``where`` (plus the window) only: the holes are usually a fraction of
    the canvas.
    """
    if not where.any():
        return labels
    pad = MODE_FILTER_SIZE // 2
    rows = np.flatnonzero(where.any(axis=(0, 2)))
    cols = np.flatnonzero(where.any(axis=(0, 1)))
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, labels.shape[1])
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, labels.shape[2])
    out = labels.copy()
    allowed = [c for c in range(num_classes) if c not in excluded]
    for i in range(labels.shape[0]):
        crop = labels[i, y0:y1, x0:x1]
        # Window counts per class (zero padding: every class loses the same out-of-canvas pixels); the
        # current label gets a small bonus so that ties keep it and flat areas do not flicker.
        counts = np.stack(
            [
                cv2.boxFilter((crop == c).astype(np.float32), -1, (MODE_FILTER_SIZE,) * 2, normalize=False,
                              borderType=cv2.BORDER_CONSTANT)
                + 1e-3 * (crop == c)
                for c in allowed
            ]
        )  # fmt: skip
        best = np.asarray(allowed)[counts.argmax(0)]
        out[i, y0:y1, x0:x1] = np.where(where[i, y0:y1, x0:x1], best, crop)
    return out


def inpaint_layout(layout: SemanticLayout) -> InpaintResult:
    """Fill every UNKNOWN pixel of ``layout`` without a model (see the module docstring)."""
    label_set = layout.label_set
    labels = as_numpy(layout.labels)
    unknown = labels == UNKNOWN
    if not unknown.any():
        return InpaintResult(layout, torch.from_numpy(unknown))
    neck = _draw_neck(labels, label_set, measure_neck(layout))
    missing_face = [i for i in range(labels.shape[0]) if unknown[i].any() and not neck[i].any()]
    if missing_face:
        logger.warning(
            "HeadSwapLayoutInpaint: no neck drawn for image(s) %s (no face above the holes, or no hole under the "
            "chin); the holes are filled from the nearest body and background labels only",
            missing_face,
        )
    labels = np.where(neck, label_set.index("neck"), labels)
    sources = ~class_mask_np(labels, label_set.group_ids("head") + label_set.group_ids("neck") + [UNKNOWN])
    rest = unknown & ~neck
    filled = nearest_label_fill_np(labels, sources)
    no_source = ~sources.reshape(len(sources), -1).any(1)
    filled = np.where(no_source[:, None, None] & rest, label_set.index("background"), filled)
    labels = np.where(rest, filled, labels)
    labels = _mode_filter(labels, rest, label_set.num_classes, label_set.group_ids("head"))
    return InpaintResult(SemanticLayout(torch.from_numpy(labels), label_set), torch.from_numpy(unknown))
