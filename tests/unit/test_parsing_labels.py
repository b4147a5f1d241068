"""Parser label numberings → canonical8 (docs/method.md §3.3): total maps, by name, never by position."""

from __future__ import annotations

import pytest
import torch

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.parsing.labels import (
    BISENET19_CLASSES,
    CELEBAMASK_TO_CANONICAL,
    SEGFORMER19_CLASSES,
    canonical_table,
    class_names_from_id2label,
)

# docs/method.md §3.3, row by row: class → (BiSeNet id, SegFormer id, canonical name)
METHOD_TABLE = {
    "background": (0, 0, "background"),
    "skin": (1, 1, "face"),
    "l_brow": (2, 6, "face"),
    "r_brow": (3, 7, "face"),
    "l_eye": (4, 4, "face"),
    "r_eye": (5, 5, "face"),
    "eye_g": (6, 3, "face"),
    "l_ear": (7, 8, "face"),
    "r_ear": (8, 9, "face"),
    "ear_r": (9, 15, "face"),
    "nose": (10, 2, "face"),
    "mouth": (11, 10, "face"),
    "u_lip": (12, 11, "face"),
    "l_lip": (13, 12, "face"),
    "neck": (14, 17, "neck"),
    "neck_l": (15, 16, "other"),
    "cloth": (16, 18, "clothes"),
    "hair": (17, 13, "hair"),
    "hat": (18, 14, "hat"),
}


@pytest.mark.parametrize("classes", [BISENET19_CLASSES, SEGFORMER19_CLASSES], ids=["bisenet19", "segformer19"])
def test_maps_are_total_and_land_in_canonical8(classes):
    table = canonical_table(classes, "test")
    assert table.shape == (19,) and table.dtype == torch.int64
    assert ((table >= 0) & (table < CANONICAL.num_classes)).all()
    assert set(classes) == set(CELEBAMASK_TO_CANONICAL)


def test_maps_follow_the_method_table():
    bisenet = canonical_table(BISENET19_CLASSES, "bisenet")
    segformer = canonical_table(SEGFORMER19_CLASSES, "segformer")
    for name, (b_id, s_id, canonical) in METHOD_TABLE.items():
        assert BISENET19_CLASSES[b_id] == name and SEGFORMER19_CLASSES[s_id] == name
        assert bisenet[b_id] == CANONICAL.index(canonical), name
        assert segformer[s_id] == CANONICAL.index(canonical), name


def test_both_parsers_give_the_same_canonical_layout_for_the_same_semantics():
    g = torch.Generator().manual_seed(0)
    names = torch.randint(0, 19, (2, 40, 30), generator=g)  # indices into BISENET19_CLASSES
    as_segformer = torch.tensor([SEGFORMER19_CLASSES.index(n) for n in BISENET19_CLASSES])[names]
    from_bisenet = canonical_table(BISENET19_CLASSES, "b")[names]
    from_segformer = canonical_table(SEGFORMER19_CLASSES, "s")[as_segformer]
    assert torch.equal(from_bisenet, from_segformer)
    assert not torch.equal(names, as_segformer)  # the numberings really differ


def test_id2label_is_read_by_name_in_any_order_and_spelling():
    permuted = list(reversed(SEGFORMER19_CLASSES))
    names = class_names_from_id2label({str(i): n for i, n in enumerate(permuted)}, 19, "cfg")
    assert names == tuple(permuted)
    table = canonical_table(names, "cfg")
    assert table[0] == CANONICAL.index("clothes") and table[18] == CANONICAL.index("background")
    spelled = ["Background", "Skin", "Nose", "Eyeglasses", "Left-Eye", "right eye", "left_eyebrow", "R_Brow",
               "l_ear", "r_ear", "mouth", "upper_lip", "lower_lip", "Hair", "hat", "earring", "necklace", "neck",
               "clothes"]  # fmt: skip
    assert torch.equal(canonical_table(spelled, "cfg"), canonical_table(SEGFORMER19_CLASSES, "cfg"))


def test_generic_or_missing_id2label_falls_back_to_the_jonathandinu_numbering():
    assert class_names_from_id2label(None, 19, "cfg") == SEGFORMER19_CLASSES
    generic = {i: f"LABEL_{i}" for i in range(19)}
    assert class_names_from_id2label(generic, 19, "cfg") == SEGFORMER19_CLASSES
    with pytest.raises(ValueError, match=r"cfg: the config names no classes .* has 5 labels"):
        class_names_from_id2label({i: f"LABEL_{i}" for i in range(5)}, 5, "cfg")


def test_unusable_label_lists_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"cfg: class names \['car', 'road'\] are not CelebAMask-HQ"):
        canonical_table(["background", "car", "road"], "cfg")
    with pytest.raises(ValueError, match=r"classes \['hair'\] appear more than once"):
        canonical_table(["background", "hair", "Hair"], "cfg")
    with pytest.raises(ValueError, match=r"id2label has ids \[0, 1, 5\] but the model has 3 labels"):
        class_names_from_id2label({0: "background", 1: "hair", 5: "skin"}, 3, "cfg")
