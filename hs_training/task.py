"""The extension point of the training framework: a :class:`Task` says WHAT is trained, the
:class:`~hs_training.trainer.Trainer` HOW (loop, DDP, precision, EMA, checkpoints, logs).

A task is a subclass with

* ``name`` (the subcommand), ``description`` (its help), ``Options`` (a dataclass of its own settings,
  which become config keys and flags next to :class:`~hs_training.config.TrainConfig`'s) and
  ``defaults`` (its values for shared settings, e.g. ``{"lr": 1e-4, "ema_decay": 0.9999}``);
* :meth:`architecture` (JSON-able; a checkpoint of another architecture is refused on resume);
* :meth:`build_model`: ONE ``nn.Module`` whose ``forward(batch)`` returns ``(loss, stats)``. The trainer
  wraps it in DistributedDataParallel, so every gradient must flow through this forward; frozen parts
  (``requires_grad=False``) may live inside it;
* :meth:`build_dataset`: a map-style dataset of dicts of tensors. Draw every random number of a sample
  (augmentation, diffusion noise, …) from the generator that :class:`~hs_training.data.SeededDataset`
  hands over: it depends only on (seed, epoch, index), so a run is the same with 1 or N processes, with any
  number of loader workers, and when resumed;
* :meth:`sample_grid` (an image for the run folder) and :meth:`export` (the file the pack's nodes load).

A subcommand that trains nothing (dataset preparation, evaluation) is a :class:`Command` instead.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .config import TrainConfig
from .distributed import DistributedContext


@dataclass
class NoOptions:
    pass


class Task:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    defaults: ClassVar[dict[str, Any]] = {}
    export_name: ClassVar[str] = "model.safetensors"

    def __init__(self, options: Any, train: TrainConfig, context: DistributedContext, run_dir: Path):
        self.options, self.train, self.context, self.run_dir = options, train, context, run_dir

    # --- required -----------------------------------------------------------------------------------
    def architecture(self) -> dict[str, Any]:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    # --- optional -----------------------------------------------------------------------------------
    def ema_module(self, model: nn.Module) -> nn.Module | None:
        """The part of ``model`` whose trainable parameters get an EMA copy (None: the whole model)."""
        return None

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups (default: every parameter that requires a gradient)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def sample_grid(self, model: nn.Module, ema_model: nn.Module | None, step: int) -> torch.Tensor | None:
        """A (3,H,W) image in 0..1 showing what the model makes now (called on the first process only)."""
        return None

    def export(self, model: nn.Module, ema_model: nn.Module | None, path: Path) -> None:
        """Write the trained model as the pack's nodes load it (called on the first process only)."""

    def summary(self, model: nn.Module) -> str:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        return f"{trainable / 1e6:.2f} M trainable and {frozen / 1e6:.2f} M frozen parameters"


class Command:
    """A subcommand that is not a training run: ``add_arguments`` fills its parser, ``run`` returns an exit code."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError
