"""The semantic layout: an integer label map plus the label set it is numbered in (docs/method.md §3).

Label maps are ``(B,H,W)`` int64 tensors on the CPU; every value is a class id of the label set or
``UNKNOWN`` (a hole to be filled by the layout generator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .labels import LABEL_SETS, UNKNOWN, UNKNOWN_COLOR, LabelSet

_MAX_LISTED = 8  # values listed in error messages before "…"


@dataclass(frozen=True)
class SemanticLayout:
    """A batch of label maps, ``labels`` (B,H,W) int64, numbered in ``label_set``."""

    labels: torch.Tensor
    label_set: LabelSet

    def __post_init__(self) -> None:
        labels = self.labels
        if labels.dtype != torch.int64 or labels.ndim != 3:
            raise ValueError(f"layout labels must be a (B,H,W) int64 tensor, got {tuple(labels.shape)} {labels.dtype}")
        if labels.shape[0] == 0 or labels.shape[1] == 0 or labels.shape[2] == 0:
            raise ValueError(f"layout labels must not be empty, got shape {tuple(labels.shape)}")
        check_label_values(labels, self.label_set, source="layout")

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def height(self) -> int:
        return self.labels.shape[1]

    @property
    def width(self) -> int:
        return self.labels.shape[2]

    def with_labels(self, labels: torch.Tensor) -> SemanticLayout:
        return SemanticLayout(labels, self.label_set)

    def mask_of(self, class_ids: Iterable[int]) -> torch.Tensor:
        """(B,H,W) float32 mask, 1 where the label is one of ``class_ids`` (UNKNOWN may be included)."""
        ids = torch.tensor(sorted(set(class_ids)), dtype=torch.int64)
        return torch.isin(self.labels, ids).to(torch.float32)


def check_label_values(labels: torch.Tensor, label_set: LabelSet, source: str) -> None:
    """Raise if ``labels`` holds ids that are neither classes of ``label_set`` nor UNKNOWN.

    Checked in numpy: a serial pass, which stays cheap when the CPU is busy with other work.
    """
    values = labels.detach().cpu().numpy()
    if values.size and values.min() >= 0 and values.max() < label_set.num_classes:
        return
    valid = (values >= 0) & ((values < label_set.num_classes) | (values == UNKNOWN))
    if bool(valid.all()):
        return
    bad = np.unique(values[~valid]).tolist()
    listed = ", ".join(str(v) for v in bad[:_MAX_LISTED]) + (", …" if len(bad) > _MAX_LISTED else "")
    raise ValueError(
        f"{source}: label values {listed} are outside label set {label_set.name!r}, which has ids "
        f"0..{label_set.num_classes - 1} ({', '.join(label_set.class_names)}) plus {UNKNOWN} for UNKNOWN; "
        f"choose the label set the map was made with"
    )


def colorize(labels: torch.Tensor, label_set: LabelSet) -> torch.Tensor:
    """(B,H,W) label ids → (B,H,W,3) float32 RGB in 0..1 with the label set's palette."""
    table = label_set.palette_tensor().to(torch.float32) / 255.0
    return table[labels.clamp(0, 255)]


def labels_from_rgb(rgb: np.ndarray, label_set: LabelSet, source: str) -> torch.Tensor:
    """(H,W,3) uint8 palette image → (H,W) int64 labels; every colour must be in the palette.

    The UNKNOWN colour decodes to UNKNOWN. Nothing is coerced: any other colour is an error that
    lists the colours found and the ones expected.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{source}: expected an (H,W,3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    unique_codes, inverse = np.unique(codes, return_inverse=True)
    colours = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(label_set.palette)}
    colours[(UNKNOWN_COLOR[0] << 16) | (UNKNOWN_COLOR[1] << 8) | UNKNOWN_COLOR[2]] = UNKNOWN
    unmatched = [int(c) for c in unique_codes if int(c) not in colours]
    if unmatched:
        found = ", ".join(str(_rgb(c)) for c in unmatched[:_MAX_LISTED]) + (
            ", …" if len(unmatched) > _MAX_LISTED else ""
        )
        expected = ", ".join(f"{n} {c}" for n, c in zip(label_set.class_names, label_set.palette, strict=True))
        all_colours = {_rgb(int(c)) for c in unique_codes} - {UNKNOWN_COLOR}
        fitting = [s.name for s in LABEL_SETS.values() if s is not label_set and all_colours <= set(s.palette)]
        hint = f" (every colour in it belongs to the {fitting[0]!r} palette: choose that label set)" if fitting else ""
        raise ValueError(
            f"{source}: {len(unmatched)} colour(s) are not in the {label_set.name!r} palette: {found}{hint}. "
            f"Expected only: {expected}, UNKNOWN {UNKNOWN_COLOR}. Paint with exact palette colours "
            f"(no anti-aliasing, no JPEG) or choose the palette the image was made with"
        )
    lookup = np.array([colours[int(c)] for c in unique_codes], dtype=np.int64)
    return torch.from_numpy(lookup[inverse].reshape(codes.shape))


def labels_from_indices(indices: np.ndarray, label_set: LabelSet, source: str) -> torch.Tensor:
    """(H,W) integer image of class ids (indexed PNG or greyscale) → (H,W) int64 labels, validated."""
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{source}: expected an (H,W) integer index image, got {indices.shape} {indices.dtype}")
    labels = torch.from_numpy(indices.astype(np.int64))
    check_label_values(labels[None], label_set, source)
    return labels


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def resolve_class_selection(selection: str, label_set: LabelSet) -> list[int]:
    """Parse a comma-separated class selection into label ids.

    Tokens are class names of ``label_set``, group names (``head``, ``neck``, ``body``, ``person``,
    ``background``), ``unknown``, or integer ids. Case and surrounding spaces are ignored.
    """
    tokens = [t.strip().lower() for t in selection.replace(";", ",").split(",") if t.strip()]
    if not tokens:
        raise ValueError(f"classes: the selection {selection!r} is empty; name at least one class, e.g. 'hair, face'")
    ids: set[int] = set()
    for token in tokens:
        if token == "unknown":
            ids.add(UNKNOWN)
        elif token in label_set.groups:
            ids.update(label_set.group_ids(token))
        elif token in label_set.class_names:
            ids.add(label_set.index(token))
        elif token.isdigit() and (int(token) < label_set.num_classes or int(token) == UNKNOWN):
            ids.add(int(token))
        else:
            raise ValueError(
                f"classes: {token!r} is not a class of label set {label_set.name!r}. Use class names "
                f"{list(label_set.class_names)}, groups {sorted(label_set.groups)}, 'unknown', or ids "
                f"0..{label_set.num_classes - 1}"
            )
    return sorted(ids)
