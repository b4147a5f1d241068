"""Training settings as dataclasses, read from a YAML/JSON file and overridden by command-line flags.

Order of precedence: a dataclass's defaults < the task's own defaults (:attr:`Task.defaults`) < the config
file < flags. The file is one flat mapping whose keys are the fields of :class:`TrainConfig` and of the
task's option dataclass (dashes or underscores); an unknown key is an error that lists the known ones.
Every field becomes a flag ``--field-name`` (booleans also ``--no-field-name``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or flag value that cannot be used (the message names it and says what was expected)."""


PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """Settings every task shares (the loop, optimiser, checkpoints, logs, precision, data loading)."""

    data: str = ""  # dataset folder (images/ + layouts/, see docs/training.md)
    out: str = "runs/train"  # run folder: checkpoints, logs, samples and the exported model
    steps: int = 1000  # optimiser steps in all
    batch_size: int = 8  # GLOBAL batch: split evenly over the processes, so results do not depend on their number
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"  # constant, cosine or linear decay to 0 after the warm-up
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema_decay: float = 0.0  # 0 = no EMA; LDM uses 0.9999 with LitEma's warm-up min(decay, (1+n)/(10+n))
    seed: int = 0
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast on a GPU; fp16 with a gradient scaler)
    channels_last: bool = False  # NHWC memory format for the model and its image inputs (GPU)
    device: str = "auto"  # auto (cuda when available), cpu or cuda
    num_workers: int = 0  # DataLoader worker processes per training process
    log_every: int = 10  # steps between loss-log lines
    sample_every: int = 500  # steps between sample grids; 0 = only at the end
    checkpoint_every: int = 500  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # numbered checkpoints kept besides last.pt
    resume: str = "auto"  # auto: continue from OUT/checkpoints/last.pt if it exists; never; or a checkpoint path
    stop_after: int = 0  # stop (with a checkpoint) after this many steps of this invocation; 0 = run to `steps`
    progress: bool = True  # tqdm progress bar on the first process


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[field.name]


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def coerce(value: Any, tp: Any, name: str, source: str) -> Any:
    """``value`` (from a file or a flag string) as type ``tp``; a ConfigError names the key and the source."""
    optional, tp = _is_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{source}: {name} must not be empty")
    try:
        origin = typing.get_origin(tp)
        if origin in (tuple, list):
            if isinstance(value, str):
                text = value.strip()
                value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            item_types = typing.get_args(tp)
            if origin is tuple and item_types and item_types[-1] is not Ellipsis:
                if len(value) != len(item_types):
                    raise ValueError(f"expected {len(item_types)} values, got {len(value)}")
                return tuple(coerce(v, t, name, source) for v, t in zip(value, item_types, strict=True))
            item = item_types[0] if item_types else str
            return origin(coerce(v, item, name, source) for v in value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError("expected true or false")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError("expected a string")
            return str(value)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{source}: {name}={value!r} is not valid ({e})") from e
    raise ConfigError(f"{source}: {name} has an unsupported type {tp}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A flat mapping from a ``.yaml``/``.yml`` or ``.json`` file (keys normalised to underscores)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e}") from e
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        raise ConfigError(f"config file {path.name!r} is not valid {path.suffix.lstrip('.').upper()}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path.name!r} must hold a mapping of settings, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def add_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of dataclass ``cls`` (default SUPPRESS: only given flags override)."""
    group = parser.add_argument_group(title)
    for field in fields(cls):
        flag = "--" + field.name.replace("_", "-")
        tp = _field_type(cls, field)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if _is_optional(tp)[1] is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=f"(default {default})"
            )
        else:
            group.add_argument(flag, default=argparse.SUPPRESS, metavar="VALUE", help=f"(default {default!r})")


def build(cls: type, *layers: tuple[Mapping[str, Any], str]):
    """An instance of dataclass ``cls`` from its defaults and ``layers`` of (values, source name), later wins.

    Values are coerced to the field types; keys that are not fields of ``cls`` are ignored here (the caller
    checks that every key belongs to some dataclass).
    """
    names = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for layer, source in layers:
        for key, value in layer.items():
            if key in names:
                values[key] = coerce(value, _field_type(cls, names[key]), key, source)
    return cls(**values)


def check_keys(values: Mapping[str, Any], source: str, *classes: type) -> None:
    known = {f.name for cls in classes for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {unknown}; known settings are {sorted(known)} "
            f"(write them with underscores or dashes)"
        )


def to_jsonable(instance: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(instance).items()}
