"""The node definitions a server's ``GET /object_info`` returns, built in-process.

For converting UI workflows (``hs_models.workflow_format``) where ComfyUI runs in the same process and no
server is listening. Mirrors ``server.PromptServer``'s ``node_info`` of ComfyUI 0.3.75.
"""

from __future__ import annotations

import json


def node_info(node_class: type) -> dict:
    """One /object_info entry for a registered V1 or V3 node class."""
    if hasattr(node_class, "GET_NODE_INFO_V1"):  # V3 (comfy_api.latest.io.ComfyNode)
        return node_class.GET_NODE_INFO_V1()
    types = node_class.INPUT_TYPES()
    info = {
        "input": types,
        "input_order": {section: list(values) for section, values in types.items()},
        "output": node_class.RETURN_TYPES,
        "output_is_list": getattr(node_class, "OUTPUT_IS_LIST", [False] * len(node_class.RETURN_TYPES)),
        "output_name": getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES),
        "description": getattr(node_class, "DESCRIPTION", ""),
        "category": getattr(node_class, "CATEGORY", "sd"),
        "output_node": bool(getattr(node_class, "OUTPUT_NODE", False)),
    }
    return info


def object_info(class_mappings: dict | None = None, display_names: dict | None = None) -> dict:
    """{node type: definition} for every registered node (ComfyUI's ``nodes.NODE_CLASS_MAPPINGS`` by default),
    JSON-normalised (tuples become lists) exactly as a client receives it."""
    if class_mappings is None:
        import nodes as comfy_nodes

        class_mappings = comfy_nodes.NODE_CLASS_MAPPINGS
        display_names = comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS
    out = {}
    for name, node_class in class_mappings.items():
        info = node_info(node_class)
        info.setdefault("name", name)
        info.setdefault("display_name", (display_names or {}).get(name, name))
        out[name] = info
    return json.loads(json.dumps(out, default=str))
