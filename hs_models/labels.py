"""Label sets of the semantic layouts (docs/method.md §3).

Every parser is mapped onto the *canonical* set (docs/method.md §3.2, a project proposal); the
``paper5`` preset reproduces the five classes and colours of the paper's figures (docs/method.md §3.1).
``UNKNOWN`` marks holes that the layout generator must fill; it is never a model input class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

UNKNOWN = 255
UNKNOWN_COLOR = (255, 255, 255)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class LabelSet:
    """Class names, preview palette and semantic groups of one label numbering."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[RGB, ...]
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"label set {self.name!r}: {len(self.class_names)} classes but {len(self.palette)} colours"
            )
        if len(set(self.palette) | {UNKNOWN_COLOR}) != len(self.palette) + 1:
            raise ValueError(f"label set {self.name!r}: palette colours must be distinct and differ from UNKNOWN's")
        for group, members in self.groups.items():
            missing = [m for m in members if m not in self.class_names]
            if missing:
                raise ValueError(f"label set {self.name!r}: group {group!r} names unknown classes {missing}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index(self, class_name: str) -> int:
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise ValueError(
                f"class {class_name!r} is not in label set {self.name!r}; its classes are {list(self.class_names)}"
            ) from None

    def ids(self, class_names: Iterable[str]) -> list[int]:
        return [self.index(name) for name in class_names]

    def group_ids(self, group: str) -> list[int]:
        """Ids of a semantic group ("head", "neck", "body", "person", "background")."""
        if group not in self.groups:
            raise ValueError(f"label set {self.name!r} has no group {group!r}; groups are {sorted(self.groups)}")
        return self.ids(self.groups[group])

    def palette_tensor(self) -> torch.Tensor:
        """(256, 3) uint8 lookup table: class id → colour; UNKNOWN and unused ids → UNKNOWN_COLOR."""
        table = torch.tensor([UNKNOWN_COLOR] * 256, dtype=torch.uint8)
        table[: self.num_classes] = torch.tensor(self.palette, dtype=torch.uint8)
        return table


def _groups(head: tuple[str, ...], neck: tuple[str, ...], body: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {
        "background": ("background",),
        "head": head,
        "neck": neck,
        "body": body,
        "person": head + neck + body,
    }


# [PROPOSAL] docs/method.md §3.2. The colours of the classes shared with paper5 are the paper's.
CANONICAL = LabelSet(
    name="canonical8",
    class_names=("background", "hair", "face", "neck", "clothes", "hat", "arms", "other"),
    palette=(
        (0, 0, 0),
        (0, 0, 128),
        (128, 0, 128),
        (128, 128, 255),
        (128, 128, 0),
        (0, 128, 128),
        (255, 160, 122),
        (0, 160, 0),
    ),
    groups=_groups(head=("hair", "face", "hat"), neck=("neck",), body=("clothes", "arms", "other")),
)

# [FIG] docs/method.md §3.1: the five pixel-exact colours of the paper's figures (the ids are ours).
PAPER5 = LabelSet(
    name="paper5",
    class_names=("background", "hair", "face", "neck", "clothes"),
    palette=((0, 0, 0), (0, 0, 128), (128, 0, 128), (128, 128, 255), (128, 128, 0)),
    groups=_groups(head=("hair", "face"), neck=("neck",), body=("clothes",)),
)

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (CANONICAL, PAPER5)}

# [PROPOSAL] docs/method.md §3.2: hat joins hair, arms and other join clothes.
CANONICAL_TO_PAPER5 = {
    "background": "background",
    "hair": "hair",
    "hat": "hair",
    "face": "face",
    "neck": "neck",
    "clothes": "clothes",
    "arms": "clothes",
    "other": "clothes",
}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; expected one of {sorted(LABEL_SETS)}") from None


def mapping_table(mapping: Mapping[int, int]) -> torch.Tensor:
    """(256,) int64 lookup table from a total id → id mapping; UNKNOWN stays UNKNOWN."""
    table = torch.full((256,), UNKNOWN, dtype=torch.int64)
    for source_id, target_id in mapping.items():
        table[source_id] = target_id
    return table


def convert_labels(labels: torch.Tensor, source: LabelSet, target: LabelSet) -> torch.Tensor:
    """Re-number a (B,H,W) int64 label map from ``source`` to ``target`` (identity or canonical8 → paper5)."""
    if source == target:
        return labels
    if source is CANONICAL and target is PAPER5:
        table = mapping_table({source.index(a): target.index(b) for a, b in CANONICAL_TO_PAPER5.items()})
        return table[labels]
    raise ValueError(
        f"cannot convert layouts from label set {source.name!r} to {target.name!r}; "
        f"only {CANONICAL.name!r} → {PAPER5.name!r} is defined"
    )
