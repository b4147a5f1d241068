"""``python -m hs_training <subcommand> …`` from the repository root (see docs/training.md)."""

import sys

from .cli import main

sys.exit(main())
