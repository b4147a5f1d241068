"""UI-format (litegraph, schema 0.4) workflows ↔ API-format prompts, driven by /object_info.

``ui_to_api`` mirrors what the frontend does when it queues a workflow, so a test can check that a
template in ``workflows/`` is exactly the graph its API twin in ``tests/e2e/prompts/`` runs.
``api_to_ui`` lays out an API prompt as a UI workflow (used by scripts/make_workflow.py).
"""

from __future__ import annotations

from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [
        (name, info["input"][section][name]) for section in ("required", "optional") for name in order.get(section, [])
    ]


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not _options(spec).get("forceInput", False)


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 else {}


# The frontend stores a seed widget's "control after generate" value right after it, and the value of an
# image-upload button ("image") after all of the node's other widgets.
def _has_control_value(spec: list) -> bool:
    return bool(_options(spec).get("control_after_generate"))


def _upload_values(specs: list[tuple[str, list]]) -> int:
    return sum(bool(_options(spec).get("image_upload")) for _, spec in specs)


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    if workflow.get("version") != 0.4:
        raise ValueError(f"expected a UI workflow of schema version 0.4, got {workflow.get('version')!r}")
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            raise ValueError(
                f"node {node['id']} ({node['type']}) is muted or bypassed; templates keep every node active"
            )
        if node["type"] not in object_info:
            raise KeyError(f"node type {node['type']!r} is not registered")
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        specs = _input_specs(object_info[node["type"]])
        uploads = _upload_values(specs)
        if uploads:
            if values[-uploads:] != ["image"] * uploads:
                raise ValueError(f"node {node['id']} ({node['type']}): the upload widget values must come last")
            del values[-uploads:]
        inputs = {}
        for name, spec in specs:
            if not _is_widget(spec):
                continue
            if not values:
                raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
            value = values.pop(0)
            if _has_control_value(spec):
                values.pop(0)
            if name not in linked:
                inputs[name] = value
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values too many: {values}")
        for name, link_id in linked.items():
            _, origin, origin_slot, target, _, _ = links[link_id]
            assert target == node["id"], f"link {link_id} does not end at node {node['id']}"
            inputs[name] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    """Lay out an API prompt (integer-string ids) as a UI workflow: one column per graph depth.

    ``_meta`` of a prompt node may set the UI node's ``title``, its ``pos`` and ``size`` (canvas pixels; the
    automatic layout otherwise) and a ``group``: nodes of one group are framed by a titled UI group.
    """
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
            if isinstance(value, list):
                link_id = len(links) + 1
                origin, slot = value
                origin_info = object_info[prompt[origin]["class_type"]]
                kind = origin_info["output"][slot]
                links.append([link_id, int(origin), slot, int(node_id), len(inputs), kind])
                out_links[(origin, slot)].append(link_id)
                socket = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": link_id}
                if _is_widget(spec):
                    socket["widget"] = {"name": name}
                    widgets.append(_widget_default(spec))
                inputs.append(socket)
            elif _is_widget(spec):
                widgets.append(value if name in entry["inputs"] else _widget_default(spec))
                if _has_control_value(spec):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        widgets += ["image"] * _upload_values(specs)
        meta = entry.get("_meta", {})
        height = 46 + 26 * (len(widgets) + max(len(inputs), len(info["output"])))
        node = {
            "id": int(node_id),
            "type": entry["class_type"],
            "pos": list(meta.get("pos", [40 + 360 * depth[node_id], 40 + column_y[depth[node_id]]])),
            "size": list(meta.get("size", [320, height])),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "properties": {"Node name for S&R": entry["class_type"]},
            "widgets_values": widgets,
        }
        if meta.get("title"):
            node["title"] = meta["title"]
        column_y[depth[node_id]] += node["size"][1] + 60
        nodes.append(node)
    for node in nodes:
        info = object_info[node["type"]]
        node["outputs"] = [
            {"name": name, "type": kind, "links": out_links.get((str(node["id"]), slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))
        ]
    return {
        "last_node_id": max(int(i) for i in prompt),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": _groups(prompt, nodes),
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [120, 80]}},
        "version": 0.4,
    }


_GROUP_PAD, _TITLE_BAR, _GROUP_TITLE = 20, 30, 40


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
