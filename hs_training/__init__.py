"""Training the pack's models on one CPU or GPU, or on many through ``torchrun`` (docs/training.md).

* :mod:`.task`: the extension point (a :class:`Task` per model, a :class:`Command` for other subcommands);
* :mod:`.trainer`: the shared loop (DDP, mixed precision, EMA, resumable checkpoints, logs, sample grids);
* :mod:`.config`: settings from a YAML/JSON file and flags; :mod:`.data`: the dataset folder format;
* :mod:`.cli`: ``python -m hs_training <subcommand>`` and the subcommand registry.

Pure PyTorch: nothing here imports ComfyUI.
"""

from .config import ConfigError, TrainConfig
from .task import Command, Task

__all__ = ["Command", "ConfigError", "Task", "TrainConfig"]
