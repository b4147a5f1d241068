"""Templates (UI format, workflows/) as the API prompts the e2e tests queue.

The conversion itself is product code (``hs_models.workflow_format``), so the tests run the templates through
the same converter the batch tools use.
"""

from __future__ import annotations

import json
from pathlib import Path

from comfyui_hs_diffusion.hs_models.workflow_format import api_to_ui, strip_meta, ui_to_api

from . import PACK_DIR

__all__ = ["TEMPLATES_DIR", "api_to_ui", "strip_meta", "template", "template_prompt", "ui_to_api"]

TEMPLATES_DIR = PACK_DIR / "workflows"


def template(name: str) -> dict:
    """The UI workflow workflows/<name>.json."""
    return json.loads((TEMPLATES_DIR / f"{name}.json").read_text())


def template_prompt(name: str, object_info: dict, images: dict[str, str] | None = None) -> dict:
    """workflows/<name>.json as an API prompt; ``images`` maps a title prefix of a LoadImage (or Load Layout)
    node, e.g. ``"Head photo"``, to the input file it should read."""
    prompt = ui_to_api(template(name), object_info)
    for prefix, filename in (images or {}).items():
        hits = [
            entry
            for entry in prompt.values()
            if "image" in entry["inputs"] and entry["_meta"]["title"].lower().startswith(prefix.lower())
        ]
        if not hits:
            raise KeyError(f"{name}: no node titled {prefix!r}… with an image input")
        for entry in hits:
            entry["inputs"]["image"] = filename
    return prompt


def template_path(name: str) -> Path:
    return TEMPLATES_DIR / f"{name}.json"
