import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_hs_diffusion.hs_models.labels import CANONICAL, PAPER5, UNKNOWN
from comfyui_hs_diffusion.hs_models.layout import SemanticLayout, colorize


def _labels(label_set, h=12, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, label_set.num_classes, (h, w), generator=g)
    labels[0, :4] = UNKNOWN
    return labels


def _save_palette_png(path, labels, label_set):
    rgb = (colorize(labels[None], label_set)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(rgb).save(path)


def test_load_layout_from_rgb_palette_png(pack_nodes, comfy_dirs):
    labels = _labels(PAPER5)
    _save_palette_png(comfy_dirs["input"] / "paper5.png", labels, PAPER5)
    node = pack_nodes["HeadSwapLoadLayout"]
    assert node.validate_inputs(image="paper5.png", label_set="paper5", decode="auto") is True
    out = node.execute(image="paper5.png", label_set="paper5", decode="auto")
    layout = out.result[0]
    assert isinstance(layout, SemanticLayout) and layout.label_set is PAPER5
    assert torch.equal(layout.labels[0], labels)
    assert out.ui is not None


def test_load_layout_from_indexed_and_grey_png(pack_nodes, comfy_dirs):
    labels = _labels(CANONICAL, seed=1)
    indexed = Image.fromarray(labels.numpy().astype(np.uint8), mode="L").convert("P")
    indexed.save(comfy_dirs["input"] / "indexed.png")
    Image.fromarray(labels.numpy().astype(np.uint8), mode="L").save(comfy_dirs["input"] / "grey.png")
    node = pack_nodes["HeadSwapLoadLayout"]
    for name in ("indexed.png", "grey.png"):
        layout = node.execute(image=name, label_set="canonical8", decode="auto").result[0]
        assert torch.equal(layout.labels[0], labels), name


def test_an_indexed_save_of_a_drawing_is_read_by_its_colours(pack_nodes, comfy_dirs):
    """Paint programs and PNG optimisers store few-colour RGB drawings as indexed images in their own palette
    order: in auto mode such a file must decode by colour, never by its meaningless indices."""
    labels = _labels(CANONICAL, seed=3)
    rgb = (colorize(labels[None], CANONICAL)[0] * 255).round().to(torch.uint8).numpy()
    indexed = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    assert indexed.mode == "P" and np.array_equal(np.asarray(indexed.convert("RGB")), rgb)
    assert not np.array_equal(np.asarray(indexed), labels.numpy())  # its indices are not the class ids
    indexed.save(comfy_dirs["input"] / "optimised.png")
    node = pack_nodes["HeadSwapLoadLayout"]
    layout = node.execute(image="optimised.png", label_set="canonical8", decode="auto").result[0]
    assert torch.equal(layout.labels[0], labels)
    # neither reading works: both are named
    bad = Image.fromarray(np.full((4, 4), 40, dtype=np.uint8), mode="L").convert("P")
    bad.save(comfy_dirs["input"] / "neither.png")
    with pytest.raises(
        ValueError, match=r"neither a layout drawn .* As colours: .*\(40, 40, 40\).* As class ids: .*40"
    ):
        node.execute(image="neither.png", label_set="canonical8", decode="auto")


def test_load_layout_rejects_off_palette_and_out_of_range(pack_nodes, comfy_dirs):
    labels = _labels(CANONICAL, seed=2)
    rgb = (colorize(labels[None], CANONICAL)[0] * 255).round().to(torch.uint8).numpy().copy()
    rgb[3, 3] = (10, 20, 30)
    Image.fromarray(rgb).save(comfy_dirs["input"] / "off.png")
    node = pack_nodes["HeadSwapLoadLayout"]
    with pytest.raises(
        ValueError, match=r"image 'off.png': 1 colour\(s\) are not in the 'canonical8' palette: \(10, 20, 30\)"
    ):
        node.execute(image="off.png", label_set="canonical8", decode="auto")
    Image.fromarray(np.full((4, 4), 9, dtype=np.uint8), mode="L").save(comfy_dirs["input"] / "nine.png")
    with pytest.raises(ValueError, match="label values 9 are outside label set 'paper5'"):
        node.execute(image="nine.png", label_set="paper5", decode="auto")
    # a canonical8 drawing is not a paper5 drawing: hat's colour is not in paper5, and the error says so
    hat = torch.full((1, 4, 4), CANONICAL.index("hat"))
    _save_palette_png(comfy_dirs["input"] / "hat.png", hat[0], CANONICAL)
    with pytest.raises(ValueError, match=r"\(0, 128, 128\) \(every colour in it belongs to the 'canonical8' palette"):
        node.execute(image="hat.png", label_set="paper5", decode="auto")
    assert "not in the input folder" in node.validate_inputs(image="missing.png", label_set="paper5", decode="auto")


def test_layout_preview_colours_and_overlay(pack_nodes):
    labels = _labels(CANONICAL)[None].repeat(2, 1, 1)
    layout = SemanticLayout(labels, CANONICAL)
    node = pack_nodes["HeadSwapLayoutPreview"]
    image = node.execute(layout=layout, opacity=0.5).result[0]
    assert image.shape == (2, 12, 20, 3)
    assert torch.equal(image, colorize(labels, CANONICAL))
    photo = torch.rand(1, 12, 20, 3)
    blended = node.execute(layout=layout, opacity=0.25, image=photo).result[0]
    assert torch.allclose(blended, photo * 0.75 + colorize(labels, CANONICAL) * 0.25)
    with pytest.raises(ValueError, match="image is 8×12 but the layout is 20×12"):
        node.execute(layout=layout, opacity=0.5, image=torch.rand(1, 12, 8, 3))
    with pytest.raises(ValueError, match="batch sizes do not match"):
        node.execute(layout=layout, opacity=0.5, image=torch.rand(3, 12, 20, 3))


def test_layout_to_mask(pack_nodes):
    labels = _labels(CANONICAL)[None]
    layout = SemanticLayout(labels, CANONICAL)
    node = pack_nodes["HeadSwapLayoutToMask"]
    mask = node.execute(layout=layout, classes="hair, unknown").result[0]
    assert mask.shape == (1, 12, 20) and mask.dtype == torch.float32
    assert torch.equal(mask.bool(), (labels == 1) | (labels == UNKNOWN))
    with pytest.raises(ValueError, match="'hat' is not a class of label set 'paper5'"):
        node.execute(layout=SemanticLayout(torch.zeros(1, 2, 2, dtype=torch.int64), PAPER5), classes="hat")


def test_convert_layout_to_paper5(pack_nodes):
    labels = _labels(CANONICAL, seed=3)[None].repeat(2, 1, 1)
    node = pack_nodes["HeadSwapConvertLayout"]
    converted = node.execute(layout=SemanticLayout(labels, CANONICAL), label_set="paper5").result[0]
    assert converted.label_set is PAPER5 and converted.labels.shape == labels.shape
    names = {"hat": "hair", "arms": "clothes", "other": "clothes"}
    for source_id, name in enumerate(CANONICAL.class_names):
        target = PAPER5.index(names.get(name, name))
        assert (converted.labels[labels == source_id] == target).all(), name
    assert (converted.labels[labels == UNKNOWN] == UNKNOWN).all() and (labels == UNKNOWN).any()
    same = SemanticLayout(_labels(PAPER5)[None], PAPER5)
    assert node.execute(layout=same, label_set="paper5").result[0].labels is same.labels
    with pytest.raises(ValueError, match=r"layout: cannot convert layouts from label set 'paper5' to 'canonical8'"):
        node.execute(layout=same, label_set="canonical8")
