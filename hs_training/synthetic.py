"""``synthetic``: write a dataset folder of procedural half-body pairs (for smoke runs and benchmarks)."""

from __future__ import annotations

import argparse

from hs_models.log import logger

from .data import write_procedural_dataset
from .task import Command


class SyntheticDataCommand(Command):
    name = "synthetic"
    description = (
        "Write OUT/images and OUT/layouts with procedural half-body layouts (hs_models.synthetic) rendered with "
        "one colour and stripe texture per class: a dataset to check a training set-up end to end in minutes."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", required=True, help="dataset folder to write")
        parser.add_argument("--count", type=int, default=256, help="number of pairs")
        parser.add_argument("--size", type=int, default=64, help="image side in pixels")
        parser.add_argument("--seed", type=int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        if args.count < 1 or args.size < 16:
            raise ValueError("--count must be at least 1 and --size at least 16")
        root = write_procedural_dataset(args.out, args.count, args.size, args.seed)
        logger.info("wrote %d procedural pairs of %d² to %s", args.count, args.size, root)
        return 0
