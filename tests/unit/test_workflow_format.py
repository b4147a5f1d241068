"""UI workflow ↔ API prompt conversion (hs_models.workflow_format) on graphs the frontend saves.

The node definitions below have the shape of ComfyUI 0.3.75's /object_info entries for KSampler, LoadImage
and friends; the e2e tier repeats the round trip against a real server's /object_info for every template.
"""

from __future__ import annotations

import copy

import pytest

from comfyui_hs_diffusion.hs_models.workflow_format import (
    WorkflowFormatError,
    api_to_ui,
    strip_meta,
    ui_to_api,
    widget_names,
)

OBJECT_INFO = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}},
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "display_name": "Load Checkpoint",
    },
    "LoadImage": {
        "input": {"required": {"image": [["x.png"], {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
        "output_name": ["IMAGE", "MASK"],
        "display_name": "Load Image",
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}],
                "steps": ["INT", {"default": 20}],
                "cfg": ["FLOAT", {"default": 8.0}],
                "sampler_name": [["euler", "dpmpp_2m"], {}],
                "latent_image": ["LATENT", {}],
            },
            "optional": {"denoise": ["FLOAT", {"default": 1.0}], "tag": ["STRING", {"forceInput": True}]},
        },
        "input_order": {
            "required": ["model", "seed", "steps", "cfg", "sampler_name", "latent_image"],
            "optional": ["denoise", "tag"],
        },
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "KSampler",
    },
    "EmptyLatentImage": {
        "input": {"required": {"width": ["INT", {"default": 512}], "height": ["INT", {"default": 512}]}},
        "input_order": {"required": ["width", "height"]},
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "Empty Latent Image",
    },
    "Blur": {  # an INT named seed without the option still gets the frontend's control widget
        "input": {"required": {"latent": ["LATENT", {}], "noise_seed": ["INT", {}], "on": ["BOOLEAN", {}]}},
        "input_order": {"required": ["latent", "noise_seed", "on"]},
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "Blur",
    },
}


def _node(node_id, kind, widgets, inputs=(), outputs=(), **extra):
    return {"id": node_id, "type": kind, "pos": [0, 0], "size": [200, 100], "mode": 0, "inputs": list(inputs),
            "outputs": list(outputs), "properties": {}, "widgets_values": widgets, **extra}  # fmt: skip


def frontend_workflow() -> dict:
    """A graph as the frontend saves it: a Note, a Reroute on the MODEL link, a PrimitiveNode driving the
    converted ``steps`` widget, a seed with its control value, an upload button value, a linked widget."""
    nodes = [
        _node(1, "CheckpointLoaderSimple", ["b.safetensors"]),
        _node(2, "Reroute", None, inputs=[{"name": "", "type": "*", "link": 1}]),
        _node(3, "EmptyLatentImage", [640, 448]),
        _node(4, "PrimitiveNode", [7, "fixed"], outputs=[{"name": "INT", "type": "INT", "widget": {"name": "steps"}, "links": [3]}]),
        _node(5, "KSampler", [42, "randomize", 20, 6.5, "dpmpp_2m", 0.5], inputs=[
            {"name": "model", "type": "MODEL", "link": 2},
            {"name": "latent_image", "type": "LATENT", "link": 4},
            {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 3},
        ], title="Sampler with a title"),
        _node(6, "Note", ["Put b.safetensors in models/checkpoints."]),
        _node(7, "MarkdownNote", ["# Read me"]),
        _node(8, "LoadImage", ["x.png", "image"]),
        _node(9, "Blur", [5, "fixed", True], inputs=[{"name": "latent", "type": "LATENT", "link": 5}]),
    ]  # fmt: skip
    links = [
        [1, 1, 0, 2, 0, "MODEL"],
        [2, 2, 0, 5, 0, "MODEL"],
        [3, 4, 0, 5, 2, "INT"],
        [4, 3, 0, 5, 1, "LATENT"],
        [5, 5, 0, 9, 0, "LATENT"],
    ]
    return {"last_node_id": 9, "last_link_id": 5, "nodes": nodes, "links": links, "groups": [], "version": 0.4}


def test_ui_to_api_as_the_frontend_queues_it():
    prompt = ui_to_api(frontend_workflow(), OBJECT_INFO)
    assert strip_meta(prompt) == {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 448}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "latent_image": ["3", 0], "seed": 42, "steps": 7, "cfg": 6.5,
            "sampler_name": "dpmpp_2m", "denoise": 0.5}},
        "8": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "9": {"class_type": "Blur", "inputs": {"latent": ["5", 0], "noise_seed": 5, "on": True}},
    }  # fmt: skip
    assert prompt["5"]["_meta"]["title"] == "Sampler with a title"
    assert prompt["3"]["_meta"]["title"] == "Empty Latent Image"  # untitled: the display name, as the frontend


def test_values_of_frontend_only_widgets_are_ignored():
    workflow = frontend_workflow()
    workflow["nodes"][7]["widgets_values"] = ["x.png"]  # no upload button value
    assert ui_to_api(workflow, OBJECT_INFO)["8"]["inputs"] == {"image": "x.png"}
    workflow["nodes"][7]["widgets_values"] = ["x.png", "image", ""]  # an extension's preview widget
    assert ui_to_api(workflow, OBJECT_INFO)["8"]["inputs"] == {"image": "x.png"}


def test_widgets_values_as_a_dict():
    workflow = frontend_workflow()
    workflow["nodes"][2]["widgets_values"] = {"width": 320, "height": 256}
    assert ui_to_api(workflow, OBJECT_INFO)["3"]["inputs"] == {"width": 320, "height": 256}


def test_bypassed_node_passes_its_matching_input_through():
    workflow = frontend_workflow()
    workflow["nodes"][4]["mode"] = 4  # KSampler bypassed: Blur reads the empty latent
    prompt = ui_to_api(workflow, OBJECT_INFO)
    assert "5" not in prompt
    assert prompt["9"]["inputs"]["latent"] == ["3", 0]


def test_muted_node_is_left_out_with_its_links():
    workflow = frontend_workflow()
    workflow["nodes"][4]["mode"] = 2
    prompt = ui_to_api(workflow, OBJECT_INFO)
    assert "5" not in prompt and "latent" not in prompt["9"]["inputs"]


def test_wrong_number_of_widget_values_names_the_node():
    workflow = frontend_workflow()
    workflow["nodes"][4]["widgets_values"] = [42, "randomize", 20, 6.5]
    with pytest.raises(WorkflowFormatError, match=r"node 5 \(KSampler, 'Sampler with a title'\).*4 values, expected 6"):
        ui_to_api(workflow, OBJECT_INFO)


def test_unknown_node_type_is_named():
    workflow = frontend_workflow()
    workflow["nodes"][2]["type"] = "SomeCustomLatent"
    with pytest.raises(WorkflowFormatError, match="not registered on this server: SomeCustomLatent"):
        ui_to_api(workflow, OBJECT_INFO)


@pytest.mark.parametrize("extra", [{"definitions": {"subgraphs": [{"id": "x"}]}}, {"extra": {"groupNodes": {"g": {}}}}])
def test_unexpanded_containers_are_refused(extra):
    with pytest.raises(WorkflowFormatError, match="subgraphs|group nodes"):
        ui_to_api({**frontend_workflow(), **extra}, OBJECT_INFO)


def test_api_prompt_is_refused_with_a_hint():
    with pytest.raises(WorkflowFormatError, match="API-format prompt"):
        ui_to_api({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}, OBJECT_INFO)


def test_api_to_ui_round_trips():
    prompt = strip_meta(ui_to_api(frontend_workflow(), OBJECT_INFO))
    prompt["3"]["_meta"] = {"title": "Size", "group": "Inputs", "pos": [10, 20]}
    workflow = api_to_ui(copy.deepcopy(prompt), OBJECT_INFO)
    assert strip_meta(ui_to_api(workflow, OBJECT_INFO)) == strip_meta(prompt)
    size = next(n for n in workflow["nodes"] if n["id"] == 3)
    assert size["title"] == "Size" and size["pos"] == [10, 20]
    assert [g["title"] for g in workflow["groups"]] == ["Inputs"]
    ksampler = next(n for n in workflow["nodes"] if n["id"] == 5)
    assert len(ksampler["widgets_values"]) == len(widget_names(OBJECT_INFO["KSampler"]))


def test_widget_names_include_control_and_upload_slots():
    assert widget_names(OBJECT_INFO["KSampler"]) == [
        "seed", "seed:control_after_generate", "steps", "cfg", "sampler_name", "denoise"]  # fmt: skip
    assert widget_names(OBJECT_INFO["LoadImage"]) == ["image", "upload"]
    assert widget_names(OBJECT_INFO["Blur"]) == ["noise_seed", "noise_seed:control_after_generate", "on"]
