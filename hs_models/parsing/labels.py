"""Label numberings of the CelebAMask-HQ face parsers and their total maps onto canonical8 (docs/method.md §3.3).

The two common 19-class parsers number the same classes differently (hair 17 vs 13, neck 14 vs 17,
cloth 16 vs 18, …), so every map is built from class *names*, never from positions. SegFormer folders
carry their numbering in ``config.json`` (``id2label``); it is read by name and only when it is absent
or generic (``LABEL_0``, …) does the fixed jonathandinu/face-parsing numbering apply.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from ..labels import CANONICAL

# zllrunning/face-parsing.PyTorch, 79999_iter.pth (docs/method.md §3.3).
BISENET19_CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip

# jonathandinu/face-parsing config.json after its "Fix labels" change (docs/method.md §3.3).
SEGFORMER19_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip

# [PROPOSAL] docs/method.md §3.3: facial parts, glasses and earrings travel with the face; the necklace
# stays with the body ("other").
CELEBAMASK_TO_CANONICAL = {
    "background": "background",
    "skin": "face",
    "l_brow": "face",
    "r_brow": "face",
    "l_eye": "face",
    "r_eye": "face",
    "eye_g": "face",
    "l_ear": "face",
    "r_ear": "face",
    "ear_r": "face",
    "nose": "face",
    "mouth": "face",
    "u_lip": "face",
    "l_lip": "face",
    "neck": "neck",
    "neck_l": "other",
    "cloth": "clothes",
    "hair": "hair",
    "hat": "hat",
}

# Other spellings of the CelebAMask-HQ classes seen in configs and third-party nodes.
_ALIASES = {
    "bg": "background",
    "face": "skin",
    "face_skin": "skin",
    "left_brow": "l_brow",
    "left_eyebrow": "l_brow",
    "l_eyebrow": "l_brow",
    "right_brow": "r_brow",
    "right_eyebrow": "r_brow",
    "r_eyebrow": "r_brow",
    "left_eye": "l_eye",
    "right_eye": "r_eye",
    "eyeglass": "eye_g",
    "eyeglasses": "eye_g",
    "glasses": "eye_g",
    "eye_glasses": "eye_g",
    "left_ear": "l_ear",
    "right_ear": "r_ear",
    "earring": "ear_r",
    "earrings": "ear_r",
    "ear_ring": "ear_r",
    "inner_mouth": "mouth",
    "upper_lip": "u_lip",
    "lower_lip": "l_lip",
    "necklace": "neck_l",
    "neck_lace": "neck_l",
    "clothes": "cloth",
    "clothing": "cloth",
    "headwear": "hat",
}

_GENERIC_NAME = re.compile(r"^label_?\d+$")


def normalise_class_name(name: str) -> str:
    """Lower case, separators unified to ``_``, aliases resolved to the CelebAMask-HQ spelling."""
    key = re.sub(r"[\s\-.]+", "_", str(name).strip().lower())
    return _ALIASES.get(key, key)


def canonical_table(class_names: Sequence[str], source: str) -> torch.Tensor:
    """(C,) int64: parser class id → canonical8 id, from the parser's class names (total or an error)."""
    normalised = [normalise_class_name(n) for n in class_names]
    unknown = [name for name, norm in zip(class_names, normalised, strict=True) if norm not in CELEBAMASK_TO_CANONICAL]
    if unknown:
        raise ValueError(
            f"{source}: class names {unknown} are not CelebAMask-HQ face-parsing classes; expected the 19 classes "
            f"{list(SEGFORMER19_CLASSES)} in any order. Only face parsers trained on CelebAMask-HQ are supported"
        )
    duplicates = sorted({n for n in normalised if normalised.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: classes {duplicates} appear more than once in the parser's label list")
    return torch.tensor([CANONICAL.index(CELEBAMASK_TO_CANONICAL[n]) for n in normalised], dtype=torch.int64)


def class_names_from_id2label(id2label: Mapping | None, num_labels: int, source: str) -> tuple[str, ...]:
    """Class names by id from a Hugging Face ``id2label``; the jonathandinu numbering if it has no real names."""
    if id2label:
        try:
            by_id = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{source}: id2label has non-integer ids {list(id2label)[:5]}") from None
        names = [by_id.get(i) for i in range(num_labels)]
        if sorted(by_id) != list(range(num_labels)):
            raise ValueError(
                f"{source}: id2label has ids {sorted(by_id)} but the model has {num_labels} labels (0..{num_labels - 1})"
            )
        if not all(_GENERIC_NAME.match(normalise_class_name(n)) for n in names):
            return tuple(names)
    if num_labels != len(SEGFORMER19_CLASSES):
        raise ValueError(
            f"{source}: the config names no classes (id2label is missing or generic) and has {num_labels} labels, "
            f"so its numbering is unknown; a face parser needs the 19 CelebAMask-HQ classes named in id2label"
        )
    return SEGFORMER19_CLASSES
