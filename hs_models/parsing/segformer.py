"""SegFormer face parser (e.g. jonathandinu/face-parsing) through transformers, from local files only.

The model is built from the folder's ``config.json`` and its weights are loaded strictly; nothing is
fetched from a hub. transformers 5 renamed SegFormer's modules, so checkpoints written by either
generation are translated to the installed one's key names (``translate_keys``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 512  # jonathandinu/face-parsing is fine-tuned at 512×512

# transformers 4 key names → transformers 5 key names, applied in this order.
_V4_TO_V5 = (
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
    (r"segformer\.encoder\.block\.(\d+)\.", r"segformer.stages.\1.blocks."),
    (r"segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
)
# transformers 5 → 4: stage-level renames first, so "stages.N.layer_norm" only matches the stage norms.
_V5_TO_V4 = (
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
)


def is_segformer_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("segformer.") for k in sd) and any(k.startswith("decode_head.") for k in sd)


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def translate_keys(sd: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename a SegFormer state dict to the key names in ``expected`` (as is, or across transformers 4 ↔ 5)."""
    for rules in ((), _V4_TO_V5, _V5_TO_V4):
        renamed = {_rename(k, rules): v for k, v in sd.items()}
        if set(renamed) == expected:
            return renamed
    return dict(sd)  # not translatable: the strict load reports the missing and unexpected keys


def key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    """'2 missing keys (e.g. a, b); 1 unexpected key (e.g. c)' for the parts that are not empty."""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts)


def build_segformer(config: Mapping, sd: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """A ``SegformerForSemanticSegmentation`` from a config dict and a state dict, loaded strictly, in eval mode."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    hf_config = SegformerConfig.from_dict(dict(config))
    model = SegformerForSemanticSegmentation(hf_config)
    expected = set(model.state_dict())
    weights = translate_keys(sd, expected)
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: the weights do not fit the SegFormer described by its config.json "
            f"({key_mismatch(missing, unexpected)}); use the config.json and model.safetensors from the same folder"
        )
    reference = model.state_dict()
    mismatched = [k for k in reference if reference[k].shape != weights[k].shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"{source}: tensor {k} has shape {tuple(weights[k].shape)} but its config.json describes "
            f"{tuple(reference[k].shape)} ({len(mismatched)} tensors differ); use the config.json and "
            f"model.safetensors from the same folder"
        )
    model.load_state_dict(weights, strict=True)
    return model.eval()


class SegformerHead(nn.Module):
    """Wraps a ``SegformerForSemanticSegmentation``: normalised (B,3,H,W) → (B,C,H/4,W/4) logits.

    Full-resolution logits are a bilinear upsample with ``align_corners=False``, as in the model
    card's usage.
    """

    align_corners = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def preprocessing_from_config(preprocessor: Mapping | None) -> tuple[int, tuple, tuple]:
    """Input size, mean and std from a ``preprocessor_config.json`` (SegFormer defaults when absent)."""
    preprocessor = preprocessor or {}
    size = preprocessor.get("size", DEFAULT_INPUT_SIZE)
    if isinstance(size, Mapping):
        height, width = size.get("height", DEFAULT_INPUT_SIZE), size.get("width", DEFAULT_INPUT_SIZE)
        size = height if height == width else DEFAULT_INPUT_SIZE
    mean = tuple(float(v) for v in preprocessor.get("image_mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in preprocessor.get("image_std", IMAGENET_STD))
    return int(size), mean, std
