"""Helpers shared by the test tiers (server harness, synthetic layouts, tiny models)."""

from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[2]
