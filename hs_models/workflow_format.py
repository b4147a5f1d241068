"""ComfyUI's two workflow formats, converted into each other without ComfyUI.

* The **UI format** (litegraph, schema 0.4) is what the frontend saves and loads: nodes with positions,
  ``widgets_values`` in widget order, links as ``[id, origin, origin_slot, target, target_slot, type]``,
  plus nodes that exist only in the browser (Note, MarkdownNote, Reroute, PrimitiveNode).
* The **API format** (a "prompt") is what ``POST /prompt`` runs: ``{id: {class_type, inputs, _meta}}``
  where an input is either a value or ``[origin_id, output_slot]``.

``ui_to_api`` does what the frontend does when it queues a workflow (graphToPrompt); ``api_to_ui`` lays an
API prompt out as a UI workflow. Both read the node definitions from a server's ``GET /object_info`` JSON
(or the same dict built in-process), because widget order and which inputs are widgets are only known there.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable

__all__ = [
    "VIRTUAL_NODE_TYPES",
    "WorkflowFormatError",
    "api_to_ui",
    "iter_links",
    "node_model_links",
    "strip_meta",
    "ui_to_api",
    "widget_names",
]

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Nodes the frontend keeps to itself: never sent to the server.
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
VIRTUAL_NODE_TYPES = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
# litegraph node modes
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
# The frontend adds a "control after generate" widget to these INT inputs even without the option.
SEED_NAMES = ("seed", "noise_seed")


class WorkflowFormatError(ValueError):
    """A workflow that cannot be converted; the message names the node and what is wrong."""


# --------------------------------------------------------------------------------------------
# node definitions (/object_info)
# --------------------------------------------------------------------------------------------


def _input_specs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of every required then optional input, in the order the frontend creates widgets."""
    sections = info.get("input", {})
    order = info.get("input_order") or {s: list(sections.get(s, {})) for s in ("required", "optional")}
    return [
        (name, list(sections[section][name]))
        for section in ("required", "optional")
        for name in order.get(section, [])
        if name in sections.get(section, {})
    ]


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _kind(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _is_widget_type(spec: list) -> bool:
    return _kind(spec) in WIDGET_TYPES


def _is_widget(spec: list) -> bool:
    return _is_widget_type(spec) and not _options(spec).get("forceInput", False)


def _has_control_value(name: str, spec: list) -> bool:
    """Whether the frontend stores a "control after generate" value right after this widget's value."""
    control = _options(spec).get("control_after_generate")
    if _kind(spec) == "INT":
        return bool(name in SEED_NAMES if control is None else control)
    return _kind(spec) == "COMBO" and bool(control)


def _upload_widgets(specs: list[tuple[str, list]]) -> int:
    """Upload buttons (image/video/audio) the frontend appends after all other widgets."""
    keys = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
    return sum(any(_options(spec).get(k) for k in keys) for _, spec in specs)


def widget_names(info: dict) -> list[str]:
    """The names the values of a node's ``widgets_values`` list stand for, in order (controls included)."""
    specs = _input_specs(info)
    names = []
    for name, spec in specs:
        if _is_widget(spec):
            names.append(name)
            if _has_control_value(name, spec):
                names.append(f"{name}:control_after_generate")
    return names + ["upload"] * _upload_widgets(specs)


def _widget_default(spec: list):
    options = _options(spec)
    if "default" in options:
        return options["default"]
    kind = spec[0]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    if kind == "COMBO":
        return (options.get("options") or [""])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


# --------------------------------------------------------------------------------------------
# UI → API
# --------------------------------------------------------------------------------------------


def iter_links(workflow: dict) -> Iterable[tuple[int, int, int, int, int, str]]:
    """Links as (id, origin, origin_slot, target, target_slot, type), from the list or the object form."""
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            yield (
                link["id"],
                link["origin_id"],
                link["origin_slot"],
                link["target_id"],
                link["target_slot"],
                link.get("type", "*"),
            )
        else:
            yield tuple(link[:6])


def _describe(node: dict) -> str:
    title = node.get("title")
    return f"node {node['id']} ({node['type']}{f', {title!r}' if title else ''})"


def _widget_values(node: dict, info: dict) -> dict[str, object]:
    """A node's widget values by input name, as the frontend restores them from ``widgets_values``."""
    raw = node.get("widgets_values")
    specs = _input_specs(info)
    if isinstance(raw, dict):  # some frontends save {name: value}
        return {name: raw[name] for name, spec in specs if _is_widget(spec) and name in raw}
    values = list(raw or [])
    widgets = [(name, spec) for name, spec in specs if _is_widget(spec)]
    expected = sum(1 + _has_control_value(n, s) for n, s in widgets)
    # Workflows saved before forceInput inputs lost their widgets still hold a value for each of them
    # (the frontend's migrateWidgetsValues).
    legacy = [(n, s) for n, s in specs if _is_widget(s) or (_is_widget_type(s) and _options(s).get("forceInput"))]
    legacy_count = sum(1 + _has_control_value(n, s) for n, s in legacy)
    if legacy_count != expected and len(values) == legacy_count:
        widgets = legacy
    elif len(values) < expected:
        raise WorkflowFormatError(
            f"{_describe(node)}: widgets_values has {len(values)} values, expected {expected} for "
            f"{widget_names(info)}; was the workflow saved with another version of this node? Open it in "
            "ComfyUI, check the node's settings and save it again"
        )
    # Values past the schema's widgets belong to widgets the frontend adds itself (upload buttons, previews).
    out = {}
    for name, spec in widgets:
        out[name] = values.pop(0)
        if _has_control_value(name, spec):
            values.pop(0)
    return {name: value for name, value in out.items() if _is_widget(dict(specs)[name])}


def _check_version(workflow: dict) -> None:
    if not isinstance(workflow, dict) or "nodes" not in workflow:
        raise WorkflowFormatError(
            "not a UI workflow (no 'nodes' list); an API-format prompt ({id: {class_type, inputs}}) needs no conversion"
        )
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowFormatError(
            "the workflow contains subgraphs, which this converter does not expand; "
            "unpack them in ComfyUI (right-click → Unpack Subgraph) and save again"
        )
    if (workflow.get("extra") or {}).get("groupNodes"):
        raise WorkflowFormatError(
            "the workflow contains group nodes, which this converter does not expand; "
            "ungroup them in ComfyUI and save again"
        )


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt the frontend queues for this UI workflow.

    Notes are dropped; Reroutes are followed to their origin; a PrimitiveNode's value goes into every widget
    it drives; muted nodes are left out (with any link that starts at one); a bypassed node's consumers read
    the bypassed node's input of the same type, as in the frontend. ``_meta.title`` carries each node's title.
    """
    _check_version(workflow)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in iter_links(workflow)}
    missing = sorted({n["type"] for n in nodes.values() if n["type"] not in object_info} - VIRTUAL_NODE_TYPES)
    if missing:
        raise WorkflowFormatError(
            f"node types not registered on this server: {', '.join(missing)}; install the custom nodes "
            "that provide them (ComfyUI Manager → Install Missing Custom Nodes) or remove those nodes"
        )

    def input_link(node: dict, slot: int) -> int | None:
        inputs = node.get("inputs") or []
        return inputs[slot].get("link") if 0 <= slot < len(inputs) else None

    def resolve(link_id: int, seen: frozenset = frozenset()) -> tuple[str, object] | None:
        """Follow a link upstream past Reroutes and bypassed nodes: ("link", [id, slot]), ("value", v) or None."""
        if link_id in seen or link_id not in links:
            return None
        _, origin_id, origin_slot, _, _, kind = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None:
            return None
        seen = seen | {link_id}
        mode = origin.get("mode", MODE_ALWAYS)
        if origin["type"] == "Reroute":
            upstream = input_link(origin, 0)
            return None if upstream is None else resolve(upstream, seen)
        if origin["type"] == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if origin["type"] in NOTE_TYPES or mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            inputs = origin.get("inputs") or []
            # The frontend prefers the input at the same slot when its type matches, then any input of that type.
            order = [origin_slot] + [i for i in range(len(inputs)) if i != origin_slot]
            for slot in order:
                if (
                    0 <= slot < len(inputs)
                    and inputs[slot].get("type") == kind
                    and inputs[slot].get("link") is not None
                ):
                    return resolve(inputs[slot]["link"], seen)
            return None
        return ("link", [str(origin_id), origin_slot])

    prompt = {}
    for node in sorted(nodes.values(), key=lambda n: n["id"]):
        if node["type"] in VIRTUAL_NODE_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        info = object_info[node["type"]]
        inputs: dict[str, object] = dict(_widget_values(node, info))
        declared = {name for name, _ in _input_specs(info)}
        for socket in node.get("inputs") or []:
            name = (socket.get("widget") or {}).get("name") or socket.get("name")
            if socket.get("link") is None or name not in declared:
                continue
            resolved = resolve(socket["link"])
            if resolved is not None:
                inputs[name] = resolved[1]
            # else the link starts at a muted node or a Note: a widget keeps its own value, a socket stays empty
        entry = {"class_type": node["type"], "inputs": inputs}
        entry["_meta"] = {"title": node.get("title") or info.get("display_name") or node["type"]}
        prompt[str(node["id"])] = entry
    return prompt


def node_model_links(workflow: dict) -> list[dict]:
    """Every ``properties.models`` entry (name, url, directory) of the workflow's nodes, with the node id."""
    found = []
    for node in workflow.get("nodes", []):
        for model in (node.get("properties") or {}).get("models") or []:
            found.append({"node": node["id"], **model})
    return found


# --------------------------------------------------------------------------------------------
# API → UI
# --------------------------------------------------------------------------------------------


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str, path: tuple = ()) -> int:
        if node_id in path:
            raise WorkflowFormatError(f"the prompt has a cycle through node {node_id}")
        if node_id not in depth:
            parents = [v[0] for v in prompt[node_id]["inputs"].values() if _is_link(v) and v[0] in prompt]
            depth[node_id] = 1 + max((visit(p, path + (node_id,)) for p in parents), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


_GROUP_PAD, _TITLE_BAR, _GROUP_TITLE = 20, 30, 40


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    """Lay out an API prompt (integer-string ids) as a UI workflow, one column per graph depth.

    ``_meta`` of a prompt node may set the UI node's ``title``, ``pos`` and ``size`` (canvas pixels; the automatic
    layout otherwise) and a ``group``: the nodes of one group are framed by a titled UI group.
    """
    for node_id, entry in prompt.items():
        if not str(node_id).isdigit():
            raise WorkflowFormatError(f"node id {node_id!r}: UI workflows need integer node ids")
        if entry["class_type"] not in object_info:
            raise WorkflowFormatError(f"node {node_id}: node type {entry['class_type']!r} is not registered")
    depth = _depths(prompt)
    ids = sorted(prompt, key=lambda i: (depth[i], int(i)))
    nodes, links = [], []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    column_y: dict[int, float] = defaultdict(float)
    for order, node_id in enumerate(ids):
        entry = prompt[node_id]
        info = object_info[entry["class_type"]]
        inputs, widgets = [], []
        specs = _input_specs(info)
        for name, spec in specs:
            value = entry["inputs"].get(name)
            socket = None
            if _is_link(value):
                link_id = len(links) + 1
                origin, slot = value
                kind = object_info[prompt[origin]["class_type"]]["output"][slot]
                links.append([link_id, int(origin), slot, int(node_id), len(inputs), kind])
                out_links[(origin, slot)].append(link_id)
                socket = {"name": name, "type": _kind(spec), "link": link_id}
            if _is_widget(spec):
                widgets.append(_widget_default(spec) if socket or name not in entry["inputs"] else value)
                if _has_control_value(name, spec):
                    widgets.append("fixed")
                if socket:
                    socket["widget"] = {"name": name}
                else:
                    continue
            inputs.append(socket or {"name": name, "type": _kind(spec), "link": None})
        widgets += ["image"] * _upload_widgets(specs)
        meta = entry.get("_meta", {})
        height = 46 + 26 * (len(widgets) + max(len(inputs), len(info["output"])))
        column = depth[node_id]
        node = {
            "id": int(node_id),
            "type": entry["class_type"],
            "pos": list(meta.get("pos", [40 + 360 * column, 40 + column_y[column]])),
            "size": list(meta.get("size", [320, height])),
            "flags": {},
            "order": order,
            "mode": MODE_ALWAYS,
            "inputs": inputs,
            "outputs": [],
            "properties": {"Node name for S&R": entry["class_type"]},
            "widgets_values": widgets,
        }
        if meta.get("title") and meta["title"] != info.get("display_name"):
            node["title"] = meta["title"]
        column_y[column] += node["size"][1] + 60
        nodes.append(node)
    for node in nodes:
        info = object_info[node["type"]]
        names = info.get("output_name") or info["output"]
        node["outputs"] = [
            {"name": name, "type": kind, "links": out_links.get((str(node["id"]), slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(names, info["output"], strict=True))
        ]
    return {
        "last_node_id": max((int(i) for i in prompt), default=0),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": _groups(prompt, nodes),
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _groups(prompt: dict, nodes: list[dict]) -> list[dict]:
    """One UI group per ``_meta.group`` name, framing its nodes (title bars included), in first-seen order."""
    boxes: dict[str, list[float]] = {}
    for node in nodes:
        name = prompt[str(node["id"])].get("_meta", {}).get("group")
        if not name:
            continue
        (x, y), (w, h) = node["pos"], node["size"]
        box = [x, y - _TITLE_BAR, x + w, y + h]
        if name in boxes:
            old = boxes[name]
            box = [min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3])]
        boxes[name] = box
    order = {name: i for i, name in enumerate(dict.fromkeys(e.get("_meta", {}).get("group") for e in prompt.values()))}
    groups = []
    for name, (x0, y0, x1, y1) in sorted(boxes.items(), key=lambda item: order[item[0]]):
        top = y0 - _GROUP_TITLE
        bounding = [x0 - _GROUP_PAD, top, x1 - x0 + 2 * _GROUP_PAD, y1 - top + _GROUP_PAD]
        groups.append({"title": name, "bounding": bounding, "color": "#3f789e", "font_size": 24, "flags": {}})
    return groups


def strip_meta(prompt: dict) -> dict:
    """The prompt without ``_meta`` (what the server executes), for comparisons."""
    return {k: {"class_type": v["class_type"], "inputs": copy.deepcopy(v["inputs"])} for k, v in prompt.items()}
