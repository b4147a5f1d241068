"""Weight-free layout inpainting: fill the UNKNOWN holes of a blended layout (method.md §6.4).

The paper fills the holes with a trained semantic layout generator (method.md §6.1). This backend
needs no weights, so the pipeline runs before any generator is trained [PROPOSAL]:

1. a neck is drawn into the holes under the jaw: from the bottom of the face down to the first known
   body or background pixel of each column (the collar), as a trapezoid whose width is
   ``0.45 × face width`` at the chin and 1.1 times that at the collar line (method.md §4, §6.4);
2. every other hole pixel takes the label of the nearest known pixel that is neither head nor neck
   (body classes or background: the body's old head area becomes background or clothes, never hair);
3. a 5×5 mode filter smooths the filled pixels (head classes do not vote: the head stays the head
   source's own).

Known labels are never changed, so everything outside the holes is exactly the blended layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .alignment import NECK_FALLBACK_RATIO, measure_neck
from .labels import UNKNOWN
from .layout import SemanticLayout
from .log import logger
from .morphology import class_mask, first_true, nearest_label_fill

BACKENDS = ("auto", "heuristic")
NECK_FLARE = 1.1  # neck width at the collar / at the chin (method.md §6.4)
MODE_FILTER_SIZE = 5


@dataclass(frozen=True)
class InpaintResult:
    layout: SemanticLayout  # no UNKNOWN left
    filled: torch.Tensor  # (B,H,W) bool: the pixels that were UNKNOWN


def draw_neck(layout: SemanticLayout) -> torch.Tensor:
    """(B,H,W) bool: the hole pixels that become neck, per image with a face; empty without one."""
    labels = layout.labels
    label_set = layout.label_set
    batch, height, width = labels.shape
    geometry = measure_neck(layout)
    unknown = labels == UNKNOWN
    ys = torch.arange(height, dtype=torch.float32)
    xs = torch.arange(width, dtype=torch.float32)

    chin_x = geometry.chin[:, 0].nan_to_num(0.0).to(torch.float32)
    chin_y = geometry.chin[:, 1].nan_to_num(-1.0).to(torch.float32)  # lower edge of the chin
    top_half = (NECK_FALLBACK_RATIO * geometry.face_width / 2).to(torch.float32)
    # Per column the neck starts under the lowest face pixel and ends at the first known pixel that is
    # body or background (the collar); head pixels in between (hair in front of the neck) are skipped.
    start = torch.where(geometry.face_bottom >= 0, geometry.face_bottom.to(torch.float32), chin_y[:, None] - 0.5)
    below_start = ys[None, :, None] > start[:, None, :]
    stopper = ~unknown & ~class_mask(labels, label_set.group_ids("head")) & below_start
    stop = first_true(stopper, 1).to(torch.float32)  # (B,W); H where nothing stops the column
    in_top = (xs[None] - chin_x[:, None]).abs() <= top_half[:, None]
    collar = torch.where(in_top & (stop < height), stop, torch.nan).nanmedian(-1).values
    face_height = (geometry.face_box[:, 3] - geometry.face_box[:, 1]).to(torch.float32)
    collar = torch.where(collar.isnan(), chin_y + 0.6 * face_height, collar).clamp(max=height - 0.5)
    # Half-width per row: constant above the chin, widening linearly to NECK_FLARE × at the collar line.
    t = ((ys[None] - chin_y[:, None]) / (collar - chin_y).clamp(min=1.0)[:, None]).clamp(0.0, 1.0)
    half = top_half[:, None] * (1.0 + (NECK_FLARE - 1.0) * t)  # (B,H)
    rows = (ys[None] <= (chin_y + 1.5 * face_height)[:, None]) & geometry.has_face[:, None]
    inside = (xs[None, None] - chin_x[:, None, None]).abs() <= half[:, :, None]
    above_stop = ys[None, :, None] < stop[:, None, :]
    return unknown & below_start & above_stop & inside & rows[:, :, None]


def _mode_filter(labels: torch.Tensor, where: torch.Tensor, num_classes: int, excluded: list[int]) -> torch.Tensor:
    """Replace ``labels`` at ``where`` by the most frequent label of its 5×5 window that is not one of
    ``excluded`` (UNKNOWN-free input).

    Runs on the bounding box of ``where`` (plus the window) only: the holes are usually a fraction of
    the canvas.
    """
    if not bool(where.any()):
        return labels
    pad = MODE_FILTER_SIZE // 2
    rows = where.any(2).any(0).nonzero()
    cols = where.any(1).any(0).nonzero()
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, labels.shape[1])
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, labels.shape[2])
    crop = labels[:, y0:y1, x0:x1]
    one_hot = F.one_hot(crop.clamp(max=num_classes - 1), num_classes).movedim(-1, 1).to(torch.float32)
    counts = F.avg_pool2d(one_hot, (1, MODE_FILTER_SIZE), stride=1, padding=(0, pad), count_include_pad=False)
    counts = F.avg_pool2d(counts, (MODE_FILTER_SIZE, 1), stride=1, padding=(pad, 0), count_include_pad=False)
    # The current label wins ties, so flat areas and symmetric edges do not flicker.
    counts = counts + 1e-3 * one_hot
    counts[:, excluded] = -1.0
    out = labels.clone()
    out[:, y0:y1, x0:x1] = torch.where(where[:, y0:y1, x0:x1], counts.argmax(1), crop)
    return out


def inpaint_layout(layout: SemanticLayout) -> InpaintResult:
    """Fill every UNKNOWN pixel of ``layout`` without a model (see the module docstring)."""
    labels = layout.labels
    label_set = layout.label_set
    unknown = labels == UNKNOWN
    if not bool(unknown.any()):
        return InpaintResult(layout, unknown)
    neck = draw_neck(layout)
    missing_face = [i for i in range(labels.shape[0]) if bool(unknown[i].any()) and not bool(neck[i].any())]
    if missing_face:
        logger.warning(
            "HeadSwapLayoutInpaint: no neck drawn for image(s) %s (no face above the holes, or no hole under the "
            "chin); the holes are filled from the nearest body and background labels only",
            missing_face,
        )
    labels = torch.where(neck, label_set.index("neck"), labels)
    sources = ~class_mask(labels, label_set.group_ids("head") + label_set.group_ids("neck") + [UNKNOWN])
    rest = unknown & ~neck
    filled = nearest_label_fill(labels, sources)
    no_source = ~sources.flatten(1).any(1)
    filled = torch.where(no_source[:, None, None] & rest, label_set.index("background"), filled)
    labels = torch.where(rest, filled, labels)
    labels = _mode_filter(labels, rest, label_set.num_classes, label_set.group_ids("head"))
    return InpaintResult(SemanticLayout(labels, label_set), unknown)
