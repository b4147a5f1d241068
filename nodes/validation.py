"""Checks of a node's typed-in values against its own schema, before anything runs.

ComfyUI 0.3.75 does not check the values of V3 combo inputs (``isinstance(input_type, list)`` is false for
``"COMBO"``), so a workflow from another ComfyUI version with a sampler this version lacks reaches the node
and fails with a library's error. Newer ComfyUI versions check combos themselves; this check agrees with
theirs and adds the model folder and README section for file choices. A ``validate_inputs`` that takes
``**kwargs`` also switches off core's own min/max checks for that node (``execution.validate_inputs``), so
numbers are checked here too, with core's limits from the same schema.

Linked inputs arrive as ``None`` during validation (their values do not exist yet); they are skipped. A
typed-in value on a socket-only input (a layout, an image, a model…) can only come from a hand-written API
prompt; it is refused here instead of reaching ``execute`` as a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import folder_paths
from comfy_api.latest import io

_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_LISTED = 12


@dataclass(frozen=True)
class ModelFiles:
    """A combo of file names from a ComfyUI model folder, and where the README says to get them."""

    folder: str
    readme_section: str


def missing_file_message(input_name: str, value: str, files: ModelFiles) -> str:
    paths = folder_paths.get_folder_paths(files.folder)
    where = paths[0] if paths else f"models/{files.folder}"
    return (
        f"{input_name}: {value!r} is not in the {files.folder} model folder ({', '.join(paths) or 'not set up'}). "
        f"Put the file into {where} as the README section {files.readme_section!r} describes, then refresh the "
        f"node (R) and pick it from the list"
    )


def _choices(options) -> str:
    shown = ", ".join(repr(o) for o in options[:_LISTED])
    return shown + (f", … ({len(options)} in all)" if len(options) > _LISTED else "")


def _io_type(item) -> str:
    return str(item.get_io_type())


def check_value(node: str, item, value) -> str | None:
    """The error for one typed-in ``value`` of schema input ``item``, or None when it is acceptable."""
    name, kind = item.id, _io_type(item)
    if isinstance(item, io.Combo.Input) and item.options is not None:
        if value not in item.options:
            return (
                f"{name}: {value!r} is not one of the choices of {node} ({_choices(item.options)}); pick one from "
                f"the list (a workflow saved with another ComfyUI version or node pack may name one that is not "
                f"available here)"
            )
        return None
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number; {node} expects a {kind.lower()} here"
        low, high = getattr(item, "min", None), getattr(item, "max", None)
        if low is not None and value < low:
            return f"{name}: {value} is smaller than the minimum {low} of {node}; use a value from {low} to {high}"
        if high is not None and value > high:
            return f"{name}: {value} is larger than the maximum {high} of {node}; use a value from {low} to {high}"
        return None
    if kind not in _WIDGET_TYPES:
        return (
            f"{name}: got the value {str(value)[:80]!r} typed in, but this input takes a {kind} from another node's "
            f"output; connect one (in an API prompt: [node_id, output_index])"
        )
    return None


def validate_schema_values(
    node_cls: type[io.ComfyNode],
    values: Mapping,
    files: Mapping[str, ModelFiles] | None = None,
    checked_by_node: tuple[str, ...] = (),
) -> bool | str:
    """``True`` when every typed-in value of ``values`` fits ``node_cls``'s schema, else the first error.

    ``files`` names the combo inputs that pick a file from a model folder: those are checked against the
    folder itself (a file added since the list was built counts; a missing one gets the folder and README
    section in the message). ``checked_by_node``: inputs the node checks itself (e.g. an uploaded file name).
    """
    schema = node_cls.define_schema()
    node = f"{schema.display_name or schema.node_id}"
    files = files or {}
    for item in schema.inputs:
        value = values.get(item.id)
        if value is None or item.id in checked_by_node:
            continue  # linked (not known yet) or an unconnected optional input
        if item.id in files:
            if not isinstance(value, str) or folder_paths.get_full_path(files[item.id].folder, value) is None:
                return missing_file_message(item.id, str(value), files[item.id])
            continue
        error = check_value(node, item, value)
        if error is not None:
            return error
    return True
