"""``python -m hs_training <subcommand> [--config FILE] [--flag value …]`` (also under ``torchrun``).

Subcommands are listed in :data:`SUBCOMMANDS` as ``name → (module, class)`` and imported only when used.
A :class:`~hs_training.task.Task` subclass trains; a :class:`~hs_training.task.Command`
subclass does anything else (dataset preparation, evaluation). Adding one is one line here plus its module.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from hs_models.log import logger

from . import config as cfg
from .checkpoint import ResumeError
from .data import DatasetError
from .distributed import setup, teardown
from .task import Command, Task

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ldm": (".ldm", "LDMTask"),
    "autoencoder": (".autoencoder", "AutoencoderTask"),
    "synthetic": (".synthetic", "SyntheticDataCommand"),
    "prepare": (".prepare", "PrepareCommand"),
    "generator": (".generator", "GeneratorTask"),
    "evaluate": (".generator", "EvaluateCommand"),
}

# Errors that are the user's to fix: printed as one message, no traceback.
USER_ERRORS = (cfg.ConfigError, ResumeError, DatasetError, FileNotFoundError)


def load_subcommand(name: str) -> type[Task] | type[Command]:
    if name not in SUBCOMMANDS:
        raise cfg.ConfigError(f"unknown subcommand {name!r}; choose one of {sorted(SUBCOMMANDS)}")
    module, attribute = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module, __package__), attribute)


def resolve_settings(task_cls: type[Task], file_values: dict[str, Any], flag_values: dict[str, Any], source: str):
    """(TrainConfig, task options) from the defaults, the task's defaults, the config file and the flags."""
    cfg.check_keys(file_values, source, cfg.TrainConfig, task_cls.Options)
    layers = [(task_cls.defaults, f"{task_cls.name} defaults"), (file_values, source), (flag_values, "flags")]
    return cfg.build(cfg.TrainConfig, *layers), cfg.build(task_cls.Options, *layers)


def train(task_name: str, settings: dict[str, Any] | None = None, config_file: str | Path | None = None) -> dict:
    """Run a training task in this process (or in each torchrun process); returns the trainer's summary."""
    from .trainer import Trainer

    task_cls = load_subcommand(task_name)
    if not issubclass(task_cls, Task):
        raise cfg.ConfigError(f"{task_name!r} is not a training task")
    file_values = cfg.read_config_file(config_file) if config_file else {}
    flags = {k.replace("-", "_"): v for k, v in (settings or {}).items()}
    cfg.check_keys(flags, "settings", cfg.TrainConfig, task_cls.Options)
    train_config, options = resolve_settings(task_cls, file_values, flags, str(config_file or "config"))
    context = setup(train_config.device)
    try:
        task = task_cls(options, train_config, context, Path(train_config.out))
        trainer = Trainer(task, train_config, context, cfg.to_jsonable(options))
        return trainer.run()
    finally:
        teardown(context)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hs_training",
        description="Train and prepare the HS-Diffusion models (docs/training.md). Multi-GPU: "
        "torchrun --nproc-per-node N -m hs_training <subcommand> ….",
    )
    parser.add_argument("subcommand", choices=sorted(SUBCOMMANDS))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    if not argv or argv[0].startswith("-"):
        _parser().parse_args(argv)  # prints usage (and help for -h)
        return 2
    name, rest = argv[0], argv[1:]
    try:
        command_cls = load_subcommand(name)
    except cfg.ConfigError as e:
        logger.error("%s", e)
        return 2
    parser = argparse.ArgumentParser(prog=f"python -m hs_training {name}", description=command_cls.description)
    try:
        if issubclass(command_cls, Task):
            parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (flags override it)")
            cfg.add_flags(parser, cfg.TrainConfig, "training settings (every task)")
            cfg.add_flags(parser, command_cls.Options, f"{name} settings")
            args = vars(parser.parse_args(rest))
            config_file = args.pop("config", None)
            summary = train(name, args, config_file)
            logger.info("%s: stopped at step %s; exported %s", name, summary["step"], summary["export"])
            return 0
        command = command_cls()
        command.add_arguments(parser)
        return command.run(parser.parse_args(rest))
    except USER_ERRORS as e:
        logger.error("%s", e)
        return 1
