"""Face-parser test material: tiny random SegFormer folders, blank BiSeNets, colour-coded fake parsers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from comfyui_hs_diffusion.hs_models.labels import CANONICAL
from comfyui_hs_diffusion.hs_models.parsing.labels import SEGFORMER19_CLASSES
from comfyui_hs_diffusion.hs_models.parsing.segformer import _V5_TO_V4, _rename

FIXTURE_BISENET = "bisenet19_random.safetensors"
FIXTURE_EXPECTED = "bisenet19_expected.npz"


def tiny_segformer_config(id2label: dict[int, str] | None = None, num_labels: int = 19) -> dict:
    """config.json of a ~50k-parameter SegFormer with the jonathandinu class names unless told otherwise."""
    from transformers import SegformerConfig

    if id2label is None:
        id2label = dict(enumerate(SEGFORMER19_CLASSES))
    config = SegformerConfig(
        num_labels=num_labels,
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 2],
        decoder_hidden_size=16,
        id2label=id2label or None,
    ).to_dict()
    if not id2label:
        config.pop("id2label", None)
        config.pop("label2id", None)
        config["num_labels"] = num_labels
    return config


def tiny_segformer_state_dict(config: dict, seed: int = 0, favour: int | None = None) -> dict[str, torch.Tensor]:
    """Random weights for ``config``; with ``favour=k`` the classifier predicts class k everywhere."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(SegformerConfig.from_dict(config)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        if favour is not None:
            model.decode_head.classifier.weight.zero_()
            model.decode_head.classifier.bias.zero_()
            model.decode_head.classifier.bias[favour] = 10.0
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_segformer_folder(
    folder: Path,
    config: dict | None = None,
    sd: dict[str, torch.Tensor] | None = None,
    transformers4_names: bool = False,
    preprocessor: dict | None = None,
) -> Path:
    """A jonathandinu-style folder (config.json + model.safetensors); returns the weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config or tiny_segformer_config()
    sd = sd if sd is not None else tiny_segformer_state_dict(config)
    if transformers4_names:
        sd = {_rename(k, _V5_TO_V4): v for k, v in sd.items()}
    (folder / "config.json").write_text(json.dumps(config))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    save_file(sd, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


def fixture_bisenet_state_dict(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / FIXTURE_BISENET))


def blank_bisenet_state_dict(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    """The fixture BiSeNet with a zero main head: every logit is 0, so every pixel is background (no face)."""
    sd = dict(fixture_bisenet_state_dict(fixtures_dir))
    sd["conv_out.conv_out.weight"] = torch.zeros_like(sd["conv_out.conv_out.weight"])
    return sd


def fake_sd_checkpoint() -> dict[str, torch.Tensor]:
    """A few keys of a Stable Diffusion checkpoint: not a face parser."""
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
    }


# Colour code of the fake parser: exact colours → canonical classes.
COLOUR_CLASSES = {
    (1.0, 0.0, 0.0): CANONICAL.index("face"),
    (0.0, 1.0, 0.0): CANONICAL.index("hair"),
    (0.0, 0.0, 1.0): CANONICAL.index("clothes"),
    (1.0, 1.0, 0.0): CANONICAL.index("neck"),
}


def colour_parser(canvases: torch.Tensor) -> torch.Tensor:
    """A perfect 'parser' for colour-coded drawings: (n,3,S,S) → (n,S,S) labels, nearest colour of the code."""
    labels = torch.zeros(canvases.shape[0], *canvases.shape[2:], dtype=torch.int64)
    for colour, class_id in COLOUR_CLASSES.items():
        target = torch.tensor(colour).view(1, 3, 1, 1)
        labels[((canvases - target).abs().amax(dim=1) < 0.25)] = class_id
    return labels


def paint(labels: torch.Tensor) -> torch.Tensor:
    """(H,W) canonical labels → (H,W,3) colour-coded image for ``colour_parser`` (background white)."""
    image = torch.ones(*labels.shape, 3)
    for colour, class_id in COLOUR_CLASSES.items():
        image[labels == class_id] = torch.tensor(colour)
    return image
