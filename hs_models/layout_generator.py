"""The semantic layout generator G_layout: a U-Net that completes a layout with holes (method.md §6).

The paper draws G_layout as a symmetric encoder–decoder with skip connections that maps the blended
layout with holes (the neck and the body's hair, in black) to a complete layout [FIG, method.md §6.1].
Our network follows the proposal of method.md §6.2: the input is the one-hot layout (all zeros where the
label is UNKNOWN), one channel marking the UNKNOWN pixels and two channels of normalised coordinates; the
output is one logit per class. Each level halves the resolution with a strided 4×4 convolution and comes
back up with a nearest upsampling and a 3×3 convolution over the concatenated skip connection
(pix2pix-style). GroupNorm instead of BatchNorm/InstanceNorm keeps it independent of the batch size and
well defined at the 1×1 bottleneck.

Files are ``.safetensors`` whose metadata holds the format marker, the architecture (:class:`GeneratorSpec`),
the label set with its class names and palette, and the training resolution; :func:`load_generator`
refuses files of another format, architecture or label set with a message that names the file.

Inference (:func:`complete_layout`) runs the network at its training resolution: the layout is fitted
into the square (aspect ratio kept, padded by repeating the edge labels), the class scores are cut back
out and resized to the layout's size, and the arg-max is taken there. Only UNKNOWN pixels take the
network's labels: ``L* = where(unknown, argmax G(·), blended)`` (method.md §6.2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .labels import CANONICAL_TO_PAPER5, LABEL_SETS, PAPER5, UNKNOWN, LabelSet, get_label_set
from .layout import SemanticLayout

FORMAT = "hs_layout_generator"
FORMAT_VERSION = 1
ARCHITECTURE = "hs_layout_unet"
TRAIN_HINT = "train one with `python -m hs_training generator` (docs/training.md)"


class GeneratorFileError(ValueError):
    """A file that is not a layout generator this pack can use; the message names the file and the fix."""


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything that fixes the network's shape; stored in the file's metadata."""

    label_set: str = "canonical8"
    resolution: int = 256  # the square side the network is trained and run at
    base_width: int = 64  # channels at full resolution
    levels: int = 6  # halvings of the resolution (256 → 4 at the bottleneck)
    max_width: int = 512
    coordinates: bool = True  # two extra input channels with the normalised x, y of each pixel

    def __post_init__(self) -> None:
        get_label_set(self.label_set)  # raises for unknown names
        if self.levels < 1 or self.base_width < 1 or self.max_width < 1:
            raise ValueError(f"layout generator: levels, base_width and max_width must be positive, got {self}")
        if self.resolution < 2**self.levels or self.resolution % 2**self.levels:
            raise ValueError(
                f"layout generator: resolution {self.resolution} must be a multiple of 2**levels = {2**self.levels} "
                f"(levels={self.levels}); choose e.g. {2**self.levels * max(1, round(self.resolution / 2**self.levels))}"
            )

    @property
    def labels(self) -> LabelSet:
        return get_label_set(self.label_set)

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    @property
    def in_channels(self) -> int:
        return self.num_classes + 1 + (2 if self.coordinates else 0)

    def widths(self) -> list[int]:
        return [min(self.base_width * 2**i, self.max_width) for i in range(self.levels + 1)]

    def to_json(self) -> str:
        return json.dumps({"arch": ARCHITECTURE, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> GeneratorSpec:
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise GeneratorFileError(f"{source}: its architecture metadata is not JSON ({e}); {TRAIN_HINT}") from e
        if not isinstance(data, dict) or data.get("arch") != ARCHITECTURE:
            arch = data.get("arch") if isinstance(data, dict) else data
            raise GeneratorFileError(
                f"{source}: architecture {arch!r} is not the pack's layout generator ({ARCHITECTURE!r}); {TRAIN_HINT}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"arch"})
        if unknown:
            raise GeneratorFileError(
                f"{source}: architecture settings {unknown} are unknown to this version of the pack; update the pack "
                f"or retrain the generator with it"
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as e:
            raise GeneratorFileError(f"{source}: invalid architecture metadata ({e}); {TRAIN_HINT}") from e


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _Down(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1),
            _norm(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )


class _Up(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class LayoutGenerator(nn.Module):
    """U-Net over ``one-hot(C) + unknown (+ x, y)`` → C class logits, all at ``spec.resolution``."""

    def __init__(self, spec: GeneratorSpec):
        super().__init__()
        self.spec = spec
        widths = spec.widths()
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, widths[0], 3, padding=1), _norm(widths[0]), nn.SiLU())
        self.down = nn.ModuleList(_Down(widths[i], widths[i + 1]) for i in range(spec.levels))
        self.middle = nn.Sequential(nn.Conv2d(widths[-1], widths[-1], 3, padding=1), _norm(widths[-1]), nn.SiLU())
        self.up = nn.ModuleList(_Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(spec.levels)))
        self.head = nn.Conv2d(widths[0], spec.num_classes, 1)

    @property
    def label_set(self) -> LabelSet:
        return self.spec.labels

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,H,W) int64 labels with UNKNOWN → (B, in_channels, H, W) float network input."""
        unknown = labels == UNKNOWN
        one_hot = F.one_hot(labels.masked_fill(unknown, 0), self.spec.num_classes).permute(0, 3, 1, 2)
        parts = [one_hot.float() * (~unknown)[:, None], unknown[:, None].float()]
        if self.spec.coordinates:
            batch, height, width = labels.shape
            ys = torch.linspace(-1.0, 1.0, height, device=labels.device)
            xs = torch.linspace(-1.0, 1.0, width, device=labels.device)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))
            parts.append(grid[None].expand(batch, -1, -1, -1))
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.middle(skips.pop())
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)

    def logits(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,R,R) int64 labels (UNKNOWN allowed) → (B,C,R,R) logits."""
        weight = self.head.weight
        return self(self.encode(labels.to(weight.device)).to(weight.dtype))


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------


def generator_metadata(spec: GeneratorSpec, extra: dict[str, str] | None = None) -> dict[str, str]:
    label_set = spec.labels
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "architecture": spec.to_json(),
        "label_set": label_set.name,
        "class_names": json.dumps(list(label_set.class_names)),
        "palette": json.dumps([list(c) for c in label_set.palette]),
        "resolution": str(spec.resolution),
        **(extra or {}),
    }


def save_generator(model: LayoutGenerator, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the weights (float32, contiguous) and the metadata to a ``.safetensors`` file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=generator_metadata(model.spec, extra_metadata))
    return path


def read_generator_file(path: str | Path, source: str | None = None) -> tuple[GeneratorSpec, dict[str, torch.Tensor]]:
    """The spec and state dict of a generator file, checked; :class:`GeneratorFileError` otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    source = source or f"layout generator file {str(path)!r}"
    if path.suffix.lower() != ".safetensors":
        raise GeneratorFileError(
            f"{source} is not a .safetensors file; layout generators are stored as .safetensors with their "
            f"architecture in the metadata. Pick the file the training wrote (model.safetensors) or {TRAIN_HINT}"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise GeneratorFileError(f"{source} cannot be read ({type(e).__name__}: {e}); it is damaged or not "
                                 f"a safetensors file. Copy it again or {TRAIN_HINT}") from e  # fmt: skip
    if metadata.get("format") != FORMAT:
        raise GeneratorFileError(
            f"{source} is not a layout generator of this pack (its metadata has format {metadata.get('format')!r}, "
            f"expected {FORMAT!r}); it may be another model type put into the wrong folder. Put it into its own "
            f"model folder, or {TRAIN_HINT}"
        )
    try:
        version = int(metadata.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise GeneratorFileError(
            f"{source} has layout-generator format version {metadata.get('format_version')!r}; this pack reads "
            f"version {FORMAT_VERSION}. Update the pack or retrain the generator"
        )
    spec = GeneratorSpec.from_json(metadata.get("architecture", ""), source)
    _check_label_set(metadata, spec, source)
    _check_state_dict(spec, state, source)
    return spec, state


def _check_label_set(metadata: dict[str, str], spec: GeneratorSpec, source: str) -> None:
    name = metadata.get("label_set")
    if name not in LABEL_SETS or name != spec.label_set:
        raise GeneratorFileError(
            f"{source} was trained for label set {name!r}; this pack knows {sorted(LABEL_SETS)}. Retrain it on "
            f"layouts in one of those label sets"
        )
    try:
        class_names = json.loads(metadata.get("class_names", "null"))
    except json.JSONDecodeError:
        class_names = None
    expected = list(get_label_set(name).class_names)
    if class_names != expected:
        raise GeneratorFileError(
            f"{source} numbers label set {name!r} as {class_names}, but the pack numbers it {expected}; its "
            f"outputs would be the wrong classes. Retrain it with this version of the pack"
        )


def _check_state_dict(spec: GeneratorSpec, state: dict[str, torch.Tensor], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in LayoutGenerator(spec).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {keys[:4]}{' …' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise GeneratorFileError(
            f"{source}: its weights do not match the architecture in its metadata ({detail}); the file is damaged "
            f"or was edited. Export it again from the training run or {TRAIN_HINT}"
        )


def load_generator(path: str | Path, source: str | None = None) -> LayoutGenerator:
    """A :class:`LayoutGenerator` in eval mode from a file written by :func:`save_generator`."""
    spec, state = read_generator_file(path, source)
    model = LayoutGenerator(spec)
    model.load_state_dict(state)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# inference: the learned backend of Layout Inpaint
# ------------------------------------------------------------------------------------------------


def label_table(source: LabelSet, target: LabelSet) -> torch.Tensor:
    """(256,) int64: ids of ``source`` → ids of ``target`` by class name (canonical8 → paper5 merges as
    method.md §3.2 does); UNKNOWN stays UNKNOWN."""
    table = torch.full((256,), UNKNOWN, dtype=torch.int64)
    for i, name in enumerate(source.class_names):
        if name in target.class_names:
            table[i] = target.index(name)
        elif target.name == PAPER5.name and name in CANONICAL_TO_PAPER5:
            table[i] = target.index(CANONICAL_TO_PAPER5[name])
        else:
            raise ValueError(
                f"layout generator: class {name!r} of label set {source.name!r} has no counterpart in "
                f"{target.name!r}; use a generator trained on {source.name!r} layouts"
            )
    return table


def fit_square(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(B,H,W) labels → (B,size,size): scaled (nearest) so the longer side fits, the rest padded by repeating
    the edge labels (the clothes continue down, the background continues sideways). Returns the box
    (top, left, height, width) the layout occupies in the square."""
    _, height, width = labels.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(labels[:, None].float(), size=(new_h, new_w), mode="nearest-exact")
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = F.pad(resized, (left, size - new_w - left, top, size - new_h - top), mode="replicate")
    return padded[:, 0].round().to(torch.int64), (top, left, new_h, new_w)


def predict_labels(
    model: LayoutGenerator,
    labels: torch.Tensor,
    chunk_size: int = 8,
    before_chunk: Callable[[], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(B,H,W) labels in the generator's label set → (B,H,W) int64 predicted labels (no UNKNOWN) at (H,W)."""
    _, height, width = labels.shape
    resolution = model.spec.resolution
    out = []
    for start in range(0, labels.shape[0], chunk_size):
        if before_chunk is not None:
            before_chunk()
        part = labels[start : start + chunk_size]
        square, (top, left, box_h, box_w) = fit_square(part, resolution)
        with torch.inference_mode():
            logits = model.logits(square)[:, :, top : top + box_h, left : left + box_w].float()
            # Class scores are resized, never labels: the arg-max at the layout's own size keeps edges sharp.
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            out.append(logits.argmax(1).to("cpu", torch.int64))
        if on_chunk is not None:
            on_chunk(part.shape[0])
    return torch.cat(out)


def complete_layout(
    model: LayoutGenerator,
    layout: SemanticLayout,
    chunk_size: int = 8,
    before_chunk: Callable[[], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[SemanticLayout, torch.Tensor]:
    """Fill the UNKNOWN pixels of ``layout`` with the generator's labels; every known label is kept.

    Layouts in another label set than the generator's are converted by class name on the way in and the
    predictions converted back (a canonical8 layout with a paper5 generator: hat → hair on input, the
    filled holes get paper5's five classes, which all exist in canonical8). Returns the completed layout
    and the (B,H,W) bool mask of the filled pixels.
    """
    labels = layout.labels
    unknown = labels == UNKNOWN
    if not bool(unknown.any()):
        return layout, unknown
    to_model = label_table(layout.label_set, model.label_set)
    from_model = label_table(model.label_set, layout.label_set)
    predicted = predict_labels(model, to_model[labels], chunk_size, before_chunk, on_chunk)
    completed = torch.where(unknown, from_model[predicted], labels)
    return SemanticLayout(completed, layout.label_set), unknown
