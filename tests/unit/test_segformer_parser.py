"""SegFormer face parsers from local folders: strict loading, transformers 4/5 key names, labels by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.parsing import SEGFORMER, ParserFiles, build_parser, parse_images
from comfyui_hs_diffusion.hs_models.parsing.labels import SEGFORMER19_CLASSES
from hs_testing.parsing import tiny_segformer_config, tiny_segformer_state_dict, write_segformer_folder


def _files(weights, **kwargs) -> ParserFiles:
    import json

    config = json.loads((weights.parent / "config.json").read_text())
    return ParserFiles(load_file(str(weights)), f"model {weights.name!r}", config=config, **kwargs)


def test_segformer_folder_builds_and_matches_transformers(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    weights = write_segformer_folder(tmp_path / "face-parsing")
    parser = build_parser(_files(weights))
    assert parser.kind == SEGFORMER and parser.input_size == 512
    assert parser.canonical_class_names()[13] == "hair" and parser.canonical_class_names()[17] == "neck"
    reference = SegformerForSemanticSegmentation(SegformerConfig.from_dict(tiny_segformer_config())).eval()
    reference.load_state_dict(load_file(str(weights)), strict=True)
    rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = (rgb - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.inference_mode():
        expected = F.interpolate(reference(pixel_values=x).logits, (64, 64), mode="bilinear", align_corners=False)
        logits = parser.logits(rgb)
        labels = parser(rgb)
    assert logits.shape == (2, 19, 64, 64)
    assert torch.allclose(logits, expected, atol=1e-5)
    top2 = expected.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 1e-4  # the label path upsamples in another memory layout (~1e-6)
    assert torch.equal(labels[decided], parser.to_canonical[expected.argmax(1)][decided])


def test_transformers4_key_names_load_to_the_same_network(tmp_path):
    config = tiny_segformer_config()
    sd = tiny_segformer_state_dict(config, seed=3)
    new = build_parser(_files(write_segformer_folder(tmp_path / "v5", config, sd)))
    old_weights = write_segformer_folder(tmp_path / "v4", config, sd, transformers4_names=True)
    assert any(k.startswith("segformer.encoder.block.") for k in load_file(str(old_weights)))
    old = build_parser(_files(old_weights))
    rgb = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(new.logits(rgb), old.logits(rgb))


@pytest.mark.parametrize(
    ("order", "expected"),
    [(SEGFORMER19_CLASSES, "hair"), (tuple(reversed(SEGFORMER19_CLASSES)), "face")],  # reversed: 13 = r_eye
    ids=["jonathandinu", "reversed"],
)
def test_labels_follow_the_names_in_config_not_the_positions(tmp_path, order, expected):
    """A network that predicts output channel 13 everywhere means whatever id2label calls 13."""
    config = tiny_segformer_config(dict(enumerate(order)))
    weights = write_segformer_folder(tmp_path / "f", config, tiny_segformer_state_dict(config, favour=13))
    parser = build_parser(_files(weights))
    with torch.inference_mode():
        labels = parser(torch.rand(1, 3, 32, 32))
    assert (labels == CANONICAL.index(expected)).all()


def test_config_without_class_names_uses_the_jonathandinu_numbering(tmp_path):
    config = tiny_segformer_config(id2label={})
    weights = write_segformer_folder(tmp_path / "f", config, tiny_segformer_state_dict(config, favour=17))
    parser = build_parser(_files(weights))
    assert parser.class_names == SEGFORMER19_CLASSES
    with torch.inference_mode():
        assert (parser(torch.rand(1, 3, 32, 32)) == CANONICAL.index("neck")).all()


def test_preprocessor_config_sets_input_size_and_normalisation(tmp_path):
    preprocessor = {"size": {"height": 256, "width": 256}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    weights = write_segformer_folder(tmp_path / "f", preprocessor=preprocessor)
    parser = build_parser(_files(weights, preprocessor=preprocessor))
    assert parser.input_size == 256 and parser.mean_rgb == (0.5, 0.5, 0.5)
    seen = []

    def network(canvases):
        seen.append(canvases.shape)
        return parser(canvases)

    with torch.inference_mode():
        result = parse_images(torch.rand(1, 100, 60, 3), network, input_size=parser.input_size, fill=parser.mean_rgb)
    assert seen == [(1, 3, 256, 256)] and result.labels.shape == (1, 100, 60)


def test_broken_segformer_folders_are_refused_clearly(tmp_path):
    weights = write_segformer_folder(tmp_path / "f")
    sd = load_file(str(weights))
    with pytest.raises(ValueError, match=r"model 'model.safetensors' holds SegFormer weights but no config.json"):
        build_parser(ParserFiles(sd, "model 'model.safetensors'"))
    bigger = tiny_segformer_config()
    bigger["hidden_sizes"] = [8, 16, 24, 40]
    with pytest.raises(ValueError, match=r"model 'x': tensor segformer.stages.3.* has shape \(32,.*describes \(40,"):
        build_parser(ParserFiles(sd, "model 'x'", config=bigger))
    deeper = tiny_segformer_config()
    deeper["depths"] = [1, 1, 1, 2]
    with pytest.raises(ValueError, match=r"the weights do not fit the SegFormer described by its config.json"):
        build_parser(ParserFiles(sd, "model 'x'", config=deeper))
    cars = tiny_segformer_config({i: f"car{i}" for i in range(19)})
    with pytest.raises(ValueError, match=r"model 'x' \(config.json\): class names \['car0'"):
        build_parser(ParserFiles(sd, "model 'x'", config=cars))
