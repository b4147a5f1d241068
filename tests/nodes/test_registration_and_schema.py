"""Registration through ComfyUI's own loader, schema/execute drift, and the schema snapshot.

Saved workflows store widget values by position, so any change to node ids, input order, types or
defaults must be deliberate: regenerate the snapshot with HS_UPDATE_SCHEMA_SNAPSHOT=1.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from pathlib import Path

from hs_testing import PACK_DIR

SNAPSHOT = Path(__file__).with_name("schema_snapshot.json")
# Combos whose options are files on disk or come from ComfyUI itself (its sampler and scheduler lists grow
# between versions): only their presence is snapshotted.
DYNAMIC_COMBOS = {
    ("HeadSwapLoadLayout", "image"),
    ("HeadSwapDiffusionLoader", "ckpt_name"),
    ("HeadSwapParsingModelLoader", "model_name"),
    ("HeadSwapLayoutGeneratorLoader", "model_name"),
    ("HeadSwapSemanticMixingKSampler", "sampler_name"),
    ("HeadSwapSemanticMixingKSampler", "scheduler"),
}


def test_comfyui_loader_registers_every_node(pack_nodes):
    import nodes as comfy_nodes

    assert asyncio.run(comfy_nodes.load_custom_node(str(PACK_DIR))) is True
    for node_id in pack_nodes:
        assert node_id in comfy_nodes.NODE_CLASS_MAPPINGS, node_id


def test_node_ids_prefix_and_categories(pack_nodes):
    for node_id, node in pack_nodes.items():
        schema = node.GET_SCHEMA()
        assert node_id.startswith("HeadSwap"), node_id
        assert schema.category.startswith("headswap/"), (node_id, schema.category)
        assert schema.description, f"{node_id} has no description"


def test_input_ids_equal_execute_parameters(pack_nodes):
    for node_id, node in pack_nodes.items():
        schema = node.GET_SCHEMA()
        input_ids = {i.id for i in schema.inputs}
        params = set(inspect.signature(node.execute).parameters)
        assert input_ids == params, f"{node_id}: inputs {sorted(input_ids)} vs execute {sorted(params)}"
        for i in schema.inputs:
            if i.optional:
                default = inspect.signature(node.execute).parameters[i.id].default
                assert default is not inspect.Parameter.empty, f"{node_id}.{i.id} is optional but has no default"


def _describe(node) -> dict:
    info = node.GET_NODE_INFO_V1()
    node_id = info["name"]
    inputs = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0]
            options = dict(spec[1]) if len(spec) > 1 else {}
            entry = {"name": name, "section": section}
            if isinstance(kind, list) or kind == "COMBO":
                entry["type"] = "COMBO"
                values = options.get("options", kind if isinstance(kind, list) else None)
                entry["options"] = "<files>" if (node_id, name) in DYNAMIC_COMBOS else values
            else:
                entry["type"] = kind
            for key in ("default", "min", "max", "step", "multiline", "control_after_generate"):
                if key in options:
                    entry[key] = options[key]
            inputs.append(entry)
    return {
        "inputs": inputs,
        "outputs": list(info["output"]),
        "output_names": list(info["output_name"]),
        "output_node": info["output_node"],
    }


def test_schema_snapshot(pack_nodes):
    current = {node_id: _describe(node) for node_id, node in sorted(pack_nodes.items())}
    if os.environ.get("HS_UPDATE_SCHEMA_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), "no schema snapshot: run the tests once with HS_UPDATE_SCHEMA_SNAPSHOT=1"
    expected = json.loads(SNAPSHOT.read_text())
    assert sorted(current) == sorted(expected), "node ids changed"
    for node_id in expected:
        assert current[node_id] == expected[node_id], (
            f"{node_id} schema changed; saved workflows store widget values by position. If intended, "
            f"regenerate with HS_UPDATE_SCHEMA_SNAPSHOT=1 and note the migration"
        )
