"""``generator``: train the semantic layout generator; ``evaluate``: score it against the weight-free backend.

Training pairs are clean layouts and their corrupted copies (method.md §6.3, :mod:`hs_training.generator_data`),
from a dataset folder (``--data``, its ``layouts/`` only; see docs/training.md) or from procedural half-body
layouts (``--procedural N``, :mod:`hs_models.synthetic`). A small share of a folder's layouts (``--holdout``,
chosen by a hash of the file name, so the split is stable as the folder grows) is never trained on and is
what ``evaluate`` scores; procedural evaluation layouts come from seeds that training never draws.
"""

from __future__ import annotations

import argparse
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hs_models.inpainting import inpaint_layout
from hs_models.labels import UNKNOWN, LabelSet, get_label_set
from hs_models.layout import SemanticLayout, colorize
from hs_models.layout_generator import (
    ARCHITECTURE,
    GeneratorFileError,
    GeneratorSpec,
    LayoutGenerator,
    complete_layout,
    count_parameters,
    fit_square,
    label_table,
    load_generator,
    save_generator,
)
from hs_models.log import logger

from .data import DATASET_JSON, LAYOUTS, DatasetError, procedural_pair, read_layout_png
from .generator_data import CorruptionSettings, IoUScore, corrupt, generator_loss
from .task import Command, Task

EVALUATION_SEED_OFFSET = 10_000_000  # procedural evaluation layouts use seeds from here on; training never does
GRID_SAMPLES = 6


@dataclass
class GeneratorOptions:
    label_set: str = "canonical8"  # the generator's classes (canonical8 or paper5)
    resolution: int = 256  # square side the generator is trained and run at
    base_width: int = 64
    levels: int = 6
    max_width: int = 512
    coordinates: bool = True
    procedural: int = 0  # > 0: train on this many procedural layouts instead of --data
    holdout: float = 0.05  # share of a dataset folder's layouts kept out of training (scored by `evaluate`)
    known_weight: float = 0.1  # cross-entropy weight outside the holes (inside: 1)
    neck_dice_weight: float = 0.1  # method.md §6.2
    cover_probability: float = 0.8
    body_hair_probability: float = 1.0
    noise_probability: float = 0.5
    max_neck_dilation: float = 8.0  # px at 256²
    init: str = ""  # start from an exported generator (.safetensors) of the same architecture

    def spec(self) -> GeneratorSpec:
        return GeneratorSpec(
            label_set=self.label_set,
            resolution=self.resolution,
            base_width=self.base_width,
            levels=self.levels,
            max_width=self.max_width,
            coordinates=self.coordinates,
        )

    def corruption(self) -> CorruptionSettings:
        return CorruptionSettings(
            neck_dilation=(0.0, self.max_neck_dilation),
            cover_probability=self.cover_probability,
            body_hair_probability=self.body_hair_probability,
            noise_probability=self.noise_probability,
        )


# ------------------------------------------------------------------------------------------------
# clean layouts: a dataset folder or procedural figures
# ------------------------------------------------------------------------------------------------


def is_held_out(name: str, holdout: float) -> bool:
    """Whether a layout (by file stem) belongs to the evaluation share: a stable hash, not the file order."""
    return zlib.crc32(name.encode("utf-8")) % 10_000 < round(holdout * 10_000)


class LayoutFolder(torch.utils.data.Dataset):
    """The clean layouts of a dataset folder's ``layouts/``, fitted into ``resolution``² as at inference."""

    def __init__(self, root: str | Path, label_set: LabelSet, resolution: int, holdout: float, held_out: bool):
        root = Path(root)
        if not str(root) or not (root / LAYOUTS).is_dir():
            raise DatasetError(
                f"dataset folder {str(root)!r} has no {LAYOUTS}/ folder; pass --data with a folder written by the "
                f"prepare subcommand (docs/training.md), or --procedural N to train on procedural layouts"
            )
        self.source_set = _folder_label_set(root)
        files = sorted((root / LAYOUTS).glob("*.png"))
        self.files = [f for f in files if is_held_out(f.stem, holdout) == held_out]
        if not self.files:
            which = "held-out" if held_out else "training"
            raise DatasetError(
                f"dataset folder {str(root)!r} has no {which} layouts ({len(files)} PNG file(s) in {LAYOUTS}/, "
                f"holdout {holdout}); add layouts with the prepare subcommand or change --holdout"
            )
        self.table = label_table(self.source_set, label_set)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        labels = read_layout_png(self.files[index], self.source_set)
        if bool((labels == UNKNOWN).any()):
            raise DatasetError(
                f"{self.files[index]}: a training layout must be complete, but it has UNKNOWN (255) pixels; "
                f"prepare it again or remove it"
            )
        return fit_square(self.table[labels][None], self.resolution)[0][0]


def _folder_label_set(root: Path) -> LabelSet:
    meta = root / DATASET_JSON
    if not meta.is_file():
        return get_label_set("canonical8")
    import json

    try:
        return get_label_set(json.loads(meta.read_text(encoding="utf-8"))["label_set"])
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{meta}: cannot read its label_set ({e}); prepare the dataset again") from e


class ProceduralLayouts(torch.utils.data.Dataset):
    """``count`` procedural half-body layouts (:func:`hs_training.data.procedural_pair`)."""

    def __init__(self, count: int, label_set: LabelSet, resolution: int, seed_offset: int = 0):
        self.count, self.resolution, self.seed_offset = count, resolution, seed_offset
        self.table = label_table(get_label_set("canonical8"), label_set)
        self.cache: dict[int, torch.Tensor] = {}  # drawn once per process (uint8: R² bytes per layout)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self.cache:
            _, labels = procedural_pair(self.seed_offset + index, self.resolution)
            self.cache[index] = self.table[labels].to(torch.uint8)
        return self.cache[index].to(torch.int64)


class CorruptedPairs(torch.utils.data.Dataset):
    """(corrupted, target) pairs; every random choice comes from the generator :class:`SeededDataset` passes."""

    def __init__(self, layouts: torch.utils.data.Dataset, label_set: LabelSet, settings: CorruptionSettings):
        self.layouts, self.label_set, self.settings = layouts, label_set, settings

    def __len__(self) -> int:
        return len(self.layouts)

    def make(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
        clean = self.layouts[index].numpy()
        count = len(self.layouts)
        other_index = int(rng.integers(0, count - 1)) if count > 1 else 0
        if count > 1 and other_index >= index:  # any layout but this one
            other_index += 1
        other = self.layouts[other_index].numpy()
        corrupted, target = corrupt(clean, other, self.label_set, rng, self.settings)
        return {"corrupted": torch.from_numpy(corrupted), "target": torch.from_numpy(target)}


class SeededPairs(torch.utils.data.Dataset):
    """:class:`CorruptedPairs` with per-(seed, epoch, index) randomness (the trainer sets the epoch)."""

    def __init__(self, pairs: CorruptedPairs, seed: int):
        self.pairs, self.seed, self.epoch = pairs, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from .data import sample_generator

        return self.pairs.make(index, sample_generator(self.seed, self.epoch, index))


# ------------------------------------------------------------------------------------------------
# the training task
# ------------------------------------------------------------------------------------------------


class GeneratorTraining(nn.Module):
    """The generator plus its loss: ``forward(batch)`` → (loss, stats), as the trainer expects."""

    def __init__(self, spec: GeneratorSpec, known_weight: float, neck_dice_weight: float):
        super().__init__()
        self.generator = LayoutGenerator(spec)
        self.neck_id = spec.labels.index("neck")
        self.known_weight, self.neck_dice_weight = known_weight, neck_dice_weight

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.generator.logits(batch["corrupted"])
        return generator_loss(
            logits, batch["corrupted"], batch["target"], self.neck_id, self.known_weight, self.neck_dice_weight
        )


class GeneratorTask(Task):
    name = "generator"
    description = (
        "Train the semantic layout generator (method.md §6) on the layouts of a dataset folder (--data) or on "
        "procedural layouts (--procedural N). Writes OUT/model.safetensors for Load Layout Generator."
    )
    Options = GeneratorOptions
    defaults = {"lr": 2e-4, "batch_size": 32, "steps": 20000, "betas": (0.5, 0.999)}
    export_name = "model.safetensors"

    def architecture(self) -> dict[str, Any]:
        return json_spec(self.options.spec())

    def build_model(self) -> nn.Module:
        options = self.options
        model = GeneratorTraining(options.spec(), options.known_weight, options.neck_dice_weight)
        if options.init:
            try:
                start = load_generator(options.init)
            except GeneratorFileError as e:
                raise DatasetError(f"--init: {e}") from e
            if start.spec != model.generator.spec:
                raise DatasetError(
                    f"--init {options.init!r} has architecture {json_spec(start.spec)}, but this run trains "
                    f"{json_spec(model.generator.spec)}; pass the same --resolution/--base-width/--levels/... or drop "
                    f"--init"
                )
            model.generator.load_state_dict(start.state_dict())
        return model

    def _layouts(self, held_out: bool) -> torch.utils.data.Dataset:
        options, label_set = self.options, get_label_set(self.options.label_set)
        if options.procedural > 0:
            offset = EVALUATION_SEED_OFFSET if held_out else 0
            return ProceduralLayouts(options.procedural, label_set, options.resolution, offset)
        if not self.train.data:
            raise DatasetError(
                "the generator needs layouts: pass --data with a dataset folder (the prepare subcommand writes one) "
                "or --procedural N for procedural layouts"
            )
        return LayoutFolder(self.train.data, label_set, options.resolution, options.holdout, held_out)

    def build_dataset(self) -> torch.utils.data.Dataset:
        label_set = get_label_set(self.options.label_set)
        return SeededPairs(CorruptedPairs(self._layouts(False), label_set, self.options.corruption()), self.train.seed)

    def sample_grid(self, model: nn.Module, ema_model: nn.Module | None, step: int) -> torch.Tensor | None:
        """Rows: the corrupted input (UNKNOWN white), the completed layout, the clean target."""
        generator = (ema_model or model).generator
        label_set = generator.label_set
        try:
            layouts = self._layouts(True)
        except DatasetError:
            layouts = self._layouts(False)
        pairs = CorruptedPairs(layouts, label_set, self.options.corruption())
        items = [pairs.make(i, torch.Generator().manual_seed(i)) for i in range(min(GRID_SAMPLES, len(layouts)))]
        corrupted = torch.stack([item["corrupted"] for item in items])
        target = torch.stack([item["target"] for item in items])
        completed, _ = complete_layout(generator, SemanticLayout(corrupted, label_set))
        rows = [colorize(labels, label_set).permute(0, 3, 1, 2) for labels in (corrupted, completed.labels, target)]
        from .logs import image_grid

        return image_grid(rows)

    def export(self, model: nn.Module, ema_model: nn.Module | None, path: Path) -> None:
        generator = (ema_model or model).generator
        source = f"procedural:{self.options.procedural}" if self.options.procedural > 0 else str(self.train.data)
        save_generator(generator, path, {"training_data": source})

    def summary(self, model: nn.Module) -> str:
        return f"layout generator, {count_parameters(model) / 1e6:.2f} M parameters, {self.options.resolution}²"


def json_spec(spec: GeneratorSpec) -> dict[str, Any]:
    return {"arch": ARCHITECTURE, **asdict(spec)}


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def evaluate_backends(
    model: LayoutGenerator,
    layouts: torch.utils.data.Dataset,
    settings: CorruptionSettings,
    samples: int,
    seed: int = 0,
    batch: int = 16,
) -> dict[str, IoUScore]:
    """Score the generator and the weight-free backend on the same corrupted held-out layouts."""
    label_set = model.label_set
    pairs = CorruptedPairs(layouts, label_set, settings)
    scores = {"generator": IoUScore(label_set), "heuristic": IoUScore(label_set)}
    count = min(samples, len(layouts))
    for start in range(0, count, batch):
        items = [pairs.make(i, torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in range(start, min(start + batch, count))]  # fmt: skip
        corrupted = SemanticLayout(torch.stack([item["corrupted"] for item in items]), label_set)
        target = torch.stack([item["target"] for item in items]).numpy()
        fill = (corrupted.labels == UNKNOWN).numpy()
        learned, _ = complete_layout(model, corrupted)
        heuristic = inpaint_layout(corrupted).layout
        scores["generator"].add(learned.labels.numpy(), target, fill)
        scores["heuristic"].add(heuristic.labels.numpy(), target, fill)
    return scores


def format_scores(scores: dict[str, IoUScore], samples: int) -> str:
    lines = [f"held-out samples: {samples}", f"{'backend':<12}{'fill mIoU':>10}{'neck IoU':>10}  per class (fill)"]
    for name, score in scores.items():
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in score.per_class().items())
        lines.append(f"{name:<12}{score.fill_miou:>10.3f}{score.neck_iou:>10.3f}  {per_class}")
    return "\n".join(lines)


class EvaluateCommand(Command):
    name = "evaluate"
    description = (
        "Score a trained layout generator against the weight-free backend on held-out layouts, both filling the "
        "same corrupted layouts: mean IoU over the filled region and neck IoU."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="the exported generator (OUT/model.safetensors)")
        parser.add_argument("--data", default="", help="dataset folder: its held-out layouts are scored")
        parser.add_argument("--procedural", type=int, default=0, help="score this many procedural layouts instead")
        parser.add_argument("--holdout", type=float, default=0.05, help="the --holdout the generator was trained with")
        parser.add_argument("--samples", type=int, default=200, help="at most this many layouts")
        parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
        parser.add_argument("--noise-probability", type=float, default=0.5)
        parser.add_argument("--cover-probability", type=float, default=0.8)

    def run(self, args: argparse.Namespace) -> int:
        try:
            model = load_generator(args.model)
        except GeneratorFileError as e:
            raise DatasetError(str(e)) from e
        spec = model.spec
        if args.procedural > 0:
            layouts = ProceduralLayouts(args.procedural, spec.labels, spec.resolution, EVALUATION_SEED_OFFSET)
        elif args.data:
            layouts = LayoutFolder(args.data, spec.labels, spec.resolution, args.holdout, held_out=True)
        else:
            raise DatasetError("evaluate needs --data DIR (its held-out layouts) or --procedural N")
        settings = CorruptionSettings(
            noise_probability=args.noise_probability, cover_probability=args.cover_probability
        )
        samples = min(args.samples, len(layouts))
        scores = evaluate_backends(model, layouts, settings, samples, args.seed)
        print(format_scores(scores, samples))  # noqa: T201 (command-line tool output)
        logger.info("evaluated %s on %d held-out layouts", args.model, samples)
        return 0
