"""The template a batch runs: a UI workflow (workflows/*.json, converted with the server's node definitions) or
an API prompt, and how one pair's files, seed and settings are put into it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..workflow_format import WorkflowFormatError, ui_to_api

IMAGE_LOADERS = ("LoadImage", "HeadSwapLoadLayout")
SEED_INPUTS = ("seed", "noise_seed")


class TemplateError(ValueError):
    """A template that cannot be used at all (unreadable, not a workflow, nodes the servers lack)."""


def read_template(path: Path) -> dict:
    """The JSON of a template file, either format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"--template: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TemplateError(f"--template: {path} is not JSON ({e})") from None
    if not is_ui_workflow(data) and not is_api_prompt(data):
        raise TemplateError(
            f"--template: {path} is neither a ComfyUI workflow (UI format, with 'nodes' and 'links') nor an API "
            f"prompt ({{id: {{class_type, inputs}}}}); save it from ComfyUI with Workflow → Save or Export (API)"
        )
    return data


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def is_api_prompt(data) -> bool:
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(v, dict) and "class_type" in v and "inputs" in v for v in data.values())
    )


def to_prompt(data: dict, object_info: dict) -> dict:
    """The API prompt of a template (UI workflows are converted with ``object_info``, a server's /object_info)."""
    if is_api_prompt(data):
        return copy.deepcopy(data)
    try:
        return ui_to_api(data, object_info)
    except WorkflowFormatError as e:
        raise TemplateError(f"--template: {e}") from None


def missing_node_types(prompt: dict, object_info: dict) -> list[str]:
    return sorted({node["class_type"] for node in prompt.values()} - set(object_info))


def _title(node_id: str, node: dict) -> str:
    return (node.get("_meta") or {}).get("title") or node["class_type"]


def image_inputs(prompt: dict) -> dict[str, str]:
    """{node id: title} of the nodes a pair's files can go into (image loaders with an ``image`` input)."""
    return {
        node_id: _title(node_id, node)
        for node_id, node in prompt.items()
        if node["class_type"] in IMAGE_LOADERS and "image" in node["inputs"]
    }


def find_input_node(prompt: dict, column: str, explicit: str | None = None) -> str:
    """The node that takes the files of ``column``: ``explicit`` (a node id or a title prefix), else the image
    loader whose title starts with the column's words (``head`` → "Head photo…", ``head_layout`` → "Head
    layout…"). Raises ValueError naming the candidates when there is none or more than one."""
    loaders = image_inputs(prompt)
    if explicit is not None:
        if explicit in loaders:
            return explicit
        wanted = explicit.lower()
    else:
        wanted = column.replace("_", " ").lower()
    candidates = [node_id for node_id, title in loaders.items() if title.lower().startswith(wanted)]
    if explicit is None and column in ("head", "body") and len(candidates) != 1:
        photo = [node_id for node_id in candidates if "layout" not in loaders[node_id].lower()]
        candidates = photo if photo else candidates
    listed = ", ".join(f"{k} {v!r}" for k, v in loaders.items()) or "none"
    if not candidates:
        how = f"--input {column}=NODE" if explicit is None else f"--input {column}={explicit}"
        raise ValueError(
            f"the template has no image input for {column!r} (no LoadImage/Load Layout node titled "
            f"{wanted!r}…); its image inputs: {listed}. Title the node, or name it with {how}"
        )
    if len(candidates) > 1:
        raise ValueError(
            f"the template has {len(candidates)} image inputs for {column!r} ({', '.join(candidates)}); name one "
            f"with --input {column}=NODE_ID (image inputs: {listed})"
        )
    return candidates[0]


def set_seed(prompt: dict, seed: int) -> list[str]:
    """Set every literal seed input; returns the node ids changed."""
    changed = []
    for node_id, node in prompt.items():
        for name in SEED_INPUTS:
            if isinstance(node["inputs"].get(name), int) and not isinstance(node["inputs"][name], bool):
                node["inputs"][name] = seed
                changed.append(node_id)
    return changed


def seeds(prompt: dict) -> list[int]:
    return sorted(
        {
            node["inputs"][name]
            for node in prompt.values()
            for name in SEED_INPUTS
            if isinstance(node["inputs"].get(name), int) and not isinstance(node["inputs"][name], bool)
        }
    )


def apply_settings(prompt: dict, settings: list[tuple[str, str, object]]) -> None:
    """``(node id or title prefix, input, value)`` overrides (``--set``); raises ValueError naming what is wrong."""
    for target, name, value in settings:
        nodes = [target] if target in prompt else [k for k, n in prompt.items() if _title(k, n).lower().startswith(target.lower())]  # fmt: skip
        if not nodes:
            raise ValueError(f"--set {target}.{name}: the template has no node with id or title {target!r}")
        for node_id in nodes:
            inputs = prompt[node_id]["inputs"]
            if name not in inputs:
                raise ValueError(
                    f"--set {target}.{name}: node {node_id} ({_title(node_id, prompt[node_id])}) has no input "
                    f"{name!r}; its inputs: {', '.join(inputs)}"
                )
            inputs[name] = value


def settings_of(prompt: dict) -> dict[str, dict]:
    """The literal (widget) inputs of every node, keyed "id title": what a record keeps to reproduce a result."""
    return {
        f"{node_id} {_title(node_id, node)}": {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        for node_id, node in sorted(prompt.items(), key=lambda item: (len(item[0]), item[0]))
        if any(not isinstance(v, list) for v in node["inputs"].values())
    }


def parse_setting(text: str) -> tuple[str, str, object]:
    """``NODE.INPUT=VALUE`` (VALUE read as JSON when it parses, else as a string)."""
    key, sep, raw = text.partition("=")
    target, dot, name = key.rpartition(".")
    if not sep or not dot or not target or not name:
        raise ValueError(
            f"--set {text!r}: expected NODE.INPUT=VALUE, e.g. --set 17.steps=30 or --set 'Paste Back.feather=12'"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return target, name, value
