"""Training pairs, losses and scores of the semantic layout generator (method.md §6.1–§6.3).

Each training pair is a clean layout (the target) and a corrupted copy with UNKNOWN holes (the input),
made with the corruptions of method.md §6.3 [PROPOSAL], which imitate what Layout Blend leaves behind:

(a) *remove neck*: the neck and a random 0–8 px (at 256²) ring around it become UNKNOWN — the whole neck is
    always in the transition region;
(b) *cover*: the hair/head silhouette of another layout, scaled 0.8–1.2 and shifted by up to ±5 % of the
    side, becomes UNKNOWN where it lies outside this layout's own head — the body's old head area that the
    new head does not cover, and the hair-shaped holes of the paper's training figure [FIG];
(c) *body-hair removal*: hair that lies below the face (over the body) becomes UNKNOWN. Blending removes
    the body source's own hair, and what lay under it is unknown, so the *target* gets there the nearest
    body or background label (clothes continue under the hair) instead of hair;
(d) *label noise*: random 1–3 px growth of class regions into their neighbours and a few small blobs, on
    the known part of the input only (the target stays clean), so parser noise is not copied into the fill.

Loss (method.md §6.2): pixel cross-entropy (weight 1 inside the holes, ``known_weight`` elsewhere) plus
``neck_dice_weight`` × a soft Dice loss on the neck class. Scores: mean IoU over the fill region (classes
present there, pooled over the set) and neck IoU over the whole layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hs_models.labels import UNKNOWN, LabelSet
from hs_models.morphology import dilate_np, nearest_label_fill_np

REFERENCE_SIDE = 256.0  # sizes in pixels below are at 256² and scale with the layout


@dataclass(frozen=True)
class CorruptionSettings:
    """Probabilities and sizes of the corruptions (sizes in pixels at 256²)."""

    neck_dilation: tuple[float, float] = (0.0, 8.0)
    cover_probability: float = 0.8
    cover_scale: tuple[float, float] = (0.8, 1.2)
    cover_shift: float = 0.05  # fraction of the side
    body_hair_probability: float = 1.0
    noise_probability: float = 0.5
    noise_radius: tuple[float, float] = (1.0, 3.0)
    noise_blobs: int = 3  # at most this many small blobs


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def head_mask(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    return np.isin(labels, label_set.group_ids("head"))


def body_hair(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """(H,W) bool: hair pixels below the lowest row of the face (hair over the body); empty without a face."""
    face = labels == label_set.index("face")
    if not face.any():
        return np.zeros(labels.shape, dtype=bool)
    rows = np.flatnonzero(face.any(axis=1))
    chin_row = int(rows[-1])
    hair = labels == label_set.index("hair")
    below = np.arange(labels.shape[0])[:, None] > chin_row
    return hair & below


def cover_silhouette(other: np.ndarray, label_set: LabelSet, rng: np.random.Generator, settings) -> np.ndarray:
    """(H,W) bool: the head silhouette of ``other`` scaled about its centre and shifted at random."""
    silhouette = head_mask(other, label_set)
    if not silhouette.any():
        return silhouette
    height, width = other.shape
    ys, xs = np.nonzero(silhouette)
    centre = (float(xs.mean()), float(ys.mean()))
    scale = _uniform(rng, settings.cover_scale)
    matrix = cv2.getRotationMatrix2D(centre, 0.0, scale)
    matrix[:, 2] += rng.uniform(-settings.cover_shift, settings.cover_shift, size=2) * (width, height)
    warped = cv2.warpAffine(silhouette.astype(np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST)
    return warped > 0


def label_noise(
    labels: np.ndarray, label_set: LabelSet, rng: np.random.Generator, settings, scale: float
) -> np.ndarray:
    """Grow one or two random classes by 1–3 px and drop a few small blobs of random person classes."""
    noisy = labels.copy()
    present = [c for c in np.unique(labels).tolist() if c != UNKNOWN]
    for class_id in rng.choice(present, size=min(len(present), int(rng.integers(1, 3))), replace=False):
        radius = _uniform(rng, settings.noise_radius) * scale
        grown = dilate_np((labels == class_id)[None], radius)[0]
        noisy[grown & (labels != UNKNOWN)] = class_id
    person = label_set.group_ids("person")
    height, width = labels.shape
    for _ in range(int(rng.integers(0, settings.noise_blobs + 1))):
        radius = max(1, round(_uniform(rng, settings.noise_radius) * scale))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        blob = np.zeros(labels.shape, dtype=np.uint8)
        cv2.circle(blob, centre, radius, 1, thickness=-1)
        noisy[(blob > 0) & (labels != UNKNOWN)] = int(rng.choice(person))
    return noisy


def corrupt(
    labels: np.ndarray,
    other: np.ndarray,
    label_set: LabelSet,
    rng: np.random.Generator,
    settings: CorruptionSettings = CorruptionSettings(),  # noqa: B008 (immutable)
) -> tuple[np.ndarray, np.ndarray]:
    """One training pair from a clean (H,W) layout: (input with UNKNOWN holes, target without UNKNOWN).

    ``other`` is another clean layout of the same size (the source of the cover silhouette).
    """
    labels = np.asarray(labels, dtype=np.int64)
    scale = min(labels.shape) / REFERENCE_SIDE
    target = labels.copy()
    holes = np.zeros(labels.shape, dtype=bool)

    # (c) the body's own hair: a hole in the input, the body under it in the target
    if rng.random() < settings.body_hair_probability:
        over_body = body_hair(labels, label_set)
        if over_body.any():
            blocked = np.isin(labels, label_set.group_ids("head") + label_set.group_ids("neck"))
            filled = nearest_label_fill_np(labels[None], (~blocked)[None])[0]
            target = np.where(over_body, filled, target)
            holes |= over_body
    # (a) the neck and a random ring around it
    neck = labels == label_set.index("neck")
    if neck.any():
        holes |= dilate_np(neck[None], _uniform(rng, settings.neck_dilation) * scale)[0]
    # (b) another head's silhouette, outside this layout's own head
    if rng.random() < settings.cover_probability:
        holes |= cover_silhouette(other, label_set, rng, settings) & ~head_mask(labels, label_set)

    corrupted = target.copy()
    if rng.random() < settings.noise_probability:
        corrupted = label_noise(corrupted, label_set, rng, settings, scale)
    corrupted[holes] = UNKNOWN
    return corrupted, target


# ------------------------------------------------------------------------------------------------
# loss
# ------------------------------------------------------------------------------------------------


def generator_loss(
    logits: torch.Tensor,
    corrupted: torch.Tensor,
    target: torch.Tensor,
    neck_id: int,
    known_weight: float = 0.1,
    neck_dice_weight: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy (1 inside the holes, ``known_weight`` outside) + ``neck_dice_weight`` × soft neck Dice."""
    unknown = (corrupted == UNKNOWN).float()
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none")
    ce_holes = (per_pixel * unknown).sum() / unknown.sum().clamp(min=1.0)
    ce_known = (per_pixel * (1 - unknown)).sum() / (1 - unknown).sum().clamp(min=1.0)
    neck_prob = logits.float().softmax(1)[:, neck_id]
    neck_true = (target == neck_id).float()
    intersection = (neck_prob * neck_true).sum((1, 2))
    total = neck_prob.sum((1, 2)) + neck_true.sum((1, 2))
    dice = (1.0 - (2.0 * intersection + 1.0) / (total + 1.0)).mean()
    loss = ce_holes + known_weight * ce_known + neck_dice_weight * dice
    return loss, {"ce_holes": ce_holes.detach(), "ce_known": ce_known.detach(), "neck_dice": dice.detach()}


# ------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------


class IoUScore:
    """Pooled IoU over a set of layouts: per class over the fill region, and the neck over whole layouts."""

    def __init__(self, label_set: LabelSet):
        self.label_set = label_set
        self.neck = label_set.index("neck")
        self.intersection = np.zeros(label_set.num_classes)
        self.union = np.zeros(label_set.num_classes)
        self.neck_intersection = 0
        self.neck_union = 0

    def add(self, predicted: np.ndarray, target: np.ndarray, fill: np.ndarray) -> None:
        for c in range(self.label_set.num_classes):
            p, t = (predicted == c) & fill, (target == c) & fill
            self.intersection[c] += np.count_nonzero(p & t)
            self.union[c] += np.count_nonzero(p | t)
        p, t = predicted == self.neck, target == self.neck
        self.neck_intersection += np.count_nonzero(p & t)
        self.neck_union += np.count_nonzero(p | t)

    @property
    def fill_miou(self) -> float:
        present = self.union > 0
        return float((self.intersection[present] / self.union[present]).mean()) if present.any() else float("nan")

    @property
    def neck_iou(self) -> float:
        return self.neck_intersection / self.neck_union if self.neck_union else float("nan")

    def per_class(self) -> dict[str, float]:
        return {
            name: float(self.intersection[c] / self.union[c])
            for c, name in enumerate(self.label_set.class_names)
            if self.union[c] > 0
        }
