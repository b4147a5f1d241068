"""One interface over every supported face parser: RGB in 0..1 → canonical8 labels (docs/method.md §3.3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import CANONICAL
from .bisenet import INPUT_SIZE as BISENET_INPUT_SIZE
from .bisenet import NUM_CLASSES as BISENET_NUM_CLASSES
from .bisenet import BiSeNet
from .labels import BISENET19_CLASSES, canonical_table, class_names_from_id2label
from .segformer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegformerHead,
    build_segformer,
    is_segformer_state_dict,
    key_mismatch,
    preprocessing_from_config,
)

BISENET = "BiSeNet"
SEGFORMER = "SegFormer"

EXPECTED_KINDS = (
    "a BiSeNet face parser with 19 CelebAMask-HQ classes (79999_iter.pth of face-parsing.PyTorch, or a "
    "safetensors conversion of it: keys cp.resnet.*, ffm.*, conv_out.*), or a SegFormer face parser "
    "(jonathandinu/face-parsing: model.safetensors with its config.json in the same folder)"
)

_BISENET_MARKERS = ("cp.resnet.conv1.weight", "ffm.convblk.conv.weight", "conv_out.conv_out.weight")


class _BiSeNetHead(nn.Module):
    """BiSeNet's main head: (B,3,H,W) → (B,C,H/8,W/8); full-resolution logits use align_corners=True."""

    align_corners = True

    def __init__(self, net: BiSeNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_lowres(x)


class FaceParsingNetwork(nn.Module):
    """A face parser with its preprocessing and label map.

    ``forward``: (B,3,S,S) RGB in 0..1 (S = ``input_size``) → (B,S,S) int64 canonical8 labels.
    ``logits``: the same input → (B,C,S,S) logits in the parser's own numbering (the reference output).

    ``net`` predicts low-resolution logits; both paths upsample them bilinearly to the input size.
    ``forward`` does so in channels-last memory, which makes the per-pixel argmax over the classes
    several times faster; the values differ from ``logits`` by float rounding only (~1e-6).
    """

    def __init__(
        self,
        net: nn.Module,
        kind: str,
        class_names: Sequence[str],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        source: str,
    ):
        super().__init__()
        self.net = net
        self.kind = kind
        self.class_names = tuple(class_names)
        self.input_size = int(input_size)
        self.mean_rgb = tuple(float(v) for v in mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("to_canonical", canonical_table(class_names, source), persistent=False)

    def get_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _lowres(self, rgb: torch.Tensor) -> torch.Tensor:
        # Written into a contiguous NCHW tensor whatever the input's strides, so the network always runs
        # in the same memory layout (channels-last views of IMAGE batches arrive here without a copy).
        x = torch.empty(rgb.shape, dtype=self.mean.dtype, device=rgb.device)
        torch.sub(rgb.to(x.dtype), self.mean, out=x).div_(self.std)
        return self.net(x.to(self.get_dtype())).float()  # upsampling and argmax in float32 at any weight dtype

    def _upsample(self, lowres: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(lowres, size, mode="bilinear", align_corners=self.net.align_corners)

    def logits(self, rgb: torch.Tensor) -> torch.Tensor:
        return self._upsample(self._lowres(rgb), rgb.shape[2:])

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        lowres = self._lowres(rgb).contiguous(memory_format=torch.channels_last)
        return self.to_canonical[self._upsample(lowres, rgb.shape[2:]).argmax(dim=1)]

    def canonical_class_names(self) -> list[str]:
        return [CANONICAL.class_names[i] for i in self.to_canonical.tolist()]


@dataclass(frozen=True)
class ParserFiles:
    """What a parsing model file provides: its state dict and, for SegFormer folders, the JSON configs."""

    state_dict: Mapping[str, torch.Tensor]
    source: str  # how errors name the file
    config: Mapping | None = None  # config.json next to the weights
    preprocessor: Mapping | None = None  # preprocessor_config.json next to the weights


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a prefix that every key has (nn.DataParallel saves ``module.``-prefixed keys)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def detect_kind(sd: Mapping[str, torch.Tensor]) -> str | None:
    """``BISENET``, ``SEGFORMER`` or None, from the state-dict keys."""
    if all(k in sd for k in _BISENET_MARKERS):
        return BISENET
    if is_segformer_state_dict(sd):
        return SEGFORMER
    return None


def describe_keys(sd: Mapping[str, torch.Tensor], limit: int = 3) -> str:
    keys = list(sd)
    if not keys:
        return "it holds no tensors"
    return f"it holds {len(keys)} tensors named like {', '.join(keys[:limit])}"


def build_parser(files: ParserFiles) -> FaceParsingNetwork:
    """Detect the architecture from the keys, build it and load the weights strictly (CPU, float32, eval)."""
    sd = strip_prefix(files.state_dict)
    kind = detect_kind(sd)
    if kind == BISENET:
        return _build_bisenet(sd, files.source)
    if kind == SEGFORMER:
        return _build_segformer(sd, files)
    if files.config is not None and files.config.get("model_type") not in (None, "segformer"):
        raise ValueError(
            f"{files.source} is a {files.config.get('model_type')!r} model (config.json), not a face parser; "
            f"expected {EXPECTED_KINDS}"
        )
    raise ValueError(f"{files.source} is not a face parsing model ({describe_keys(sd)}); expected {EXPECTED_KINDS}")


def _build_bisenet(sd: dict[str, torch.Tensor], source: str) -> FaceParsingNetwork:
    num_classes = sd["conv_out.conv_out.weight"].shape[0]
    if num_classes != BISENET_NUM_CLASSES:
        raise ValueError(
            f"{source} is a BiSeNet with {num_classes} classes; only the 19-class CelebAMask-HQ face parser "
            f"(79999_iter.pth) has a known label numbering"
        )
    net = BiSeNet(num_classes)
    expected = net.state_dict()
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm step counters; they do not affect inference.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = expected[key]
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} looks like a BiSeNet face parser but does not fit the architecture "
            f"({key_mismatch(missing, unexpected)}); expected {EXPECTED_KINDS}"
        )
    mismatched = [k for k in expected if expected[k].shape != sd[k].shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"{source}: tensor {k} has shape {tuple(sd[k].shape)} but BiSeNet expects {tuple(expected[k].shape)}; "
            f"expected {EXPECTED_KINDS}"
        )
    net.load_state_dict(sd, strict=True)
    return FaceParsingNetwork(
        _BiSeNetHead(net.eval()), BISENET, BISENET19_CLASSES, BISENET_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, source
    ).eval()


def _build_segformer(sd: dict[str, torch.Tensor], files: ParserFiles) -> FaceParsingNetwork:
    config = files.config
    if config is None:
        raise ValueError(
            f"{files.source} holds SegFormer weights but no config.json lies next to it; put the whole "
            f"jonathandinu/face-parsing folder (config.json and model.safetensors) into the parsing model folder"
        )
    if config.get("model_type", "segformer") != "segformer":
        raise ValueError(
            f"{files.source}: its config.json describes a {config.get('model_type')!r} model, not a SegFormer"
        )
    net = build_segformer(config, sd, files.source)
    num_labels = net.config.num_labels
    labels_source = f"{files.source} (config.json)"
    class_names = class_names_from_id2label(config.get("id2label"), num_labels, labels_source)
    size, mean, std = preprocessing_from_config(files.preprocessor)
    return FaceParsingNetwork(SegformerHead(net), SEGFORMER, class_names, size, mean, std, labels_source).eval()
