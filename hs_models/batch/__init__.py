"""Batch head swaps: pairs of photos from a CSV or two folders, run through a template on one or more ComfyUI
servers (``python -m hs_models.batch``; see docs/batch.md).

Standard library only (plus tqdm for the progress bar when installed), so it runs on any machine that can reach
the servers; ComfyUI and the pack are needed on the servers only.
"""

from .client import ComfyClient, NotUsable, PromptFailed, ServerGone
from .pairs import Pair, PairsError, pairs_from_folders, read_csv
from .runner import RECORD, SUMMARY, BatchOptions, BatchRun, read_record
from .template import TemplateError, missing_node_types, read_template, to_prompt

__all__ = [
    "RECORD",
    "SUMMARY",
    "BatchOptions",
    "BatchRun",
    "ComfyClient",
    "NotUsable",
    "Pair",
    "PairsError",
    "PromptFailed",
    "ServerGone",
    "TemplateError",
    "missing_node_types",
    "pairs_from_folders",
    "read_csv",
    "read_record",
    "read_template",
    "to_prompt",
]
