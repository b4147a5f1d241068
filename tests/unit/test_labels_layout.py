import numpy as np
import pytest
import torch

from comfyui_hs_diffusion.hs_models.labels import (
    CANONICAL,
    CANONICAL_TO_PAPER5,
    PAPER5,
    UNKNOWN,
    UNKNOWN_COLOR,
    LabelSet,
    convert_labels,
    get_label_set,
)
from comfyui_hs_diffusion.hs_models.layout import (
    SemanticLayout,
    colorize,
    labels_from_indices,
    labels_from_rgb,
    resolve_class_selection,
)


def random_labels(label_set, shape=(2, 17, 23), with_unknown=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, label_set.num_classes, shape, generator=g)
    if with_unknown:
        labels[:, :3, :3] = UNKNOWN
    return labels


def test_canonical_and_paper5_follow_method_doc():
    assert CANONICAL.class_names == ("background", "hair", "face", "neck", "clothes", "hat", "arms", "other")
    assert PAPER5.palette == ((0, 0, 0), (0, 0, 128), (128, 0, 128), (128, 128, 255), (128, 128, 0))
    # Colours of classes present in both sets agree, so canonical previews read like the paper's figures.
    for name in PAPER5.class_names:
        assert CANONICAL.palette[CANONICAL.index(name)] == PAPER5.palette[PAPER5.index(name)]


def test_groups_partition_the_person():
    for label_set in (CANONICAL, PAPER5):
        head, neck, body = (set(label_set.group_ids(g)) for g in ("head", "neck", "body"))
        assert not (head & neck or head & body or neck & body)
        assert head | neck | body == set(label_set.group_ids("person"))
        assert set(range(label_set.num_classes)) == head | neck | body | {label_set.index("background")}


def test_canonical_to_paper5_mapping_is_total_and_keeps_unknown():
    assert set(CANONICAL_TO_PAPER5) == set(CANONICAL.class_names)
    labels = random_labels(CANONICAL)
    converted = convert_labels(labels, CANONICAL, PAPER5)
    assert converted.dtype == torch.int64
    assert (converted[labels == UNKNOWN] == UNKNOWN).all()
    for name in CANONICAL.class_names:
        assert (converted[labels == CANONICAL.index(name)] == PAPER5.index(CANONICAL_TO_PAPER5[name])).all()
    with pytest.raises(ValueError, match="cannot convert"):
        convert_labels(labels, PAPER5, CANONICAL)


def test_label_set_validation():
    with pytest.raises(ValueError, match="distinct"):
        LabelSet("bad", ("a", "b"), ((1, 2, 3), (1, 2, 3)))
    with pytest.raises(ValueError, match="UNKNOWN"):
        LabelSet("bad", ("a",), (UNKNOWN_COLOR,))
    with pytest.raises(ValueError, match="unknown label set 'nope'"):
        get_label_set("nope")


@pytest.mark.parametrize("label_set", [CANONICAL, PAPER5], ids=lambda s: s.name)
def test_palette_round_trip(label_set):
    labels = random_labels(label_set)
    rgb = (colorize(labels, label_set) * 255).round().to(torch.uint8).numpy()
    for i in range(labels.shape[0]):
        assert torch.equal(labels_from_rgb(rgb[i], label_set, source="t"), labels[i])


def test_off_palette_colours_are_an_error_listing_found_and_expected():
    rgb = (colorize(random_labels(CANONICAL), CANONICAL)[0] * 255).round().to(torch.uint8).numpy().copy()
    rgb[5, 5] = (1, 2, 3)
    rgb[6, 6] = (250, 250, 250)
    with pytest.raises(ValueError) as info:
        labels_from_rgb(rgb, CANONICAL, source="image 'x.png'")
    message = str(info.value)
    assert "image 'x.png'" in message and "2 colour(s)" in message
    assert "(1, 2, 3)" in message and "(250, 250, 250)" in message
    assert "hair (0, 0, 128)" in message


def test_index_maps_are_validated():
    good = np.array([[0, 4], [255, 3]], dtype=np.uint8)
    assert labels_from_indices(good, PAPER5, source="t").tolist() == [[0, 4], [255, 3]]
    with pytest.raises(ValueError, match=r"label values 5, 17 are outside label set 'paper5'"):
        labels_from_indices(np.array([[5, 17]], dtype=np.uint8), PAPER5, source="t")


def test_semantic_layout_contract():
    labels = random_labels(CANONICAL)
    layout = SemanticLayout(labels, CANONICAL)
    assert (layout.batch_size, layout.height, layout.width) == (2, 17, 23)
    mask = layout.mask_of(CANONICAL.group_ids("head"))
    assert mask.dtype == torch.float32 and mask.shape == labels.shape
    assert torch.equal(mask.bool(), torch.isin(labels, torch.tensor([1, 2, 5])))
    with pytest.raises(ValueError, match="int64"):
        SemanticLayout(labels.to(torch.int32), CANONICAL)
    with pytest.raises(ValueError, match="outside label set"):
        SemanticLayout(torch.full((1, 2, 2), 7), PAPER5)
    with pytest.raises(ValueError, match="empty"):
        SemanticLayout(torch.zeros((0, 2, 2), dtype=torch.int64), PAPER5)


def test_class_selection():
    assert resolve_class_selection("head", CANONICAL) == [1, 2, 5]
    assert resolve_class_selection(" Hair ; neck, 7, unknown", CANONICAL) == [1, 3, 7, UNKNOWN]
    assert resolve_class_selection("body", PAPER5) == [4]
    with pytest.raises(ValueError, match="'hat' is not a class of label set 'paper5'"):
        resolve_class_selection("hat", PAPER5)
    with pytest.raises(ValueError, match="empty"):
        resolve_class_selection(" , ", CANONICAL)
