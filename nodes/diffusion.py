"""Loader and layout conditioning of the semantic-mixing LDM (docs/method.md §8, comfyui.md §8–§9)."""

from __future__ import annotations

import json
import os

import comfy.sd
import folder_paths
import node_helpers
from comfy.cli_args import args
from comfy_api.latest import io

from ..hs_models.files import apply_umask
from ..hs_models.layout import SemanticLayout
from ..hs_models.ldm import ForeignCheckpointError, read_ldm_checkpoint
from ..hs_models.ldm.convert import WEIGHT_CHOICES
from ..hs_models.log import logger
from .diffusion_model import (
    LAYOUT_KEY,
    UNKNOWN_POLICY_KEY,
    WEIGHT_DTYPES,
    HeadSwapDiffusionModel,
    HeadSwapVQVAE,
    build_model,
    build_vae,
    describe,
)
from .types import HeadSwapLayout
from .validation import ModelFiles, validate_schema_values

FOLDER = "headswap_diffusion"
CHECKPOINT_FILES = ModelFiles(FOLDER, "Models")
UNKNOWN_CHOICES = {"error": "error", "no class": "zeros"}


def _foreign_hint(error: ForeignCheckpointError) -> str:
    if error.description and ("Stable Diffusion" in error.description or "SDXL" in error.description):
        return (
            " Load it with the core Load Checkpoint node instead: the semantic-mixing sampler can use that MODEL "
            "directly (an approximation of HS-Diffusion, guided by prompts instead of a layout model)."
        )
    return " Put a semantic-mixing LDM checkpoint (or a file made with scripts/convert_ldm.py) in models/headswap_diffusion."


class HeadSwapDiffusionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapDiffusionLoader",
            display_name="Load Semantic-Mixing LDM (HeadSwap)",
            category="headswap/loaders",
            description=(
                "Loads a layout-conditioned latent diffusion model in LDM format (.safetensors or .ckpt from "
                "models/headswap_diffusion): the UNet as MODEL for the stock KSampler, SamplerCustomAdvanced or the "
                "semantic-mixing sampler, and its VQ-f4 autoencoder as VAE for the core VAE Encode/Decode nodes. "
                "Condition it with HeadSwap Layout Conditioning (it takes no text prompt); use cfg 1.0."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip="LDM-format checkpoint in models/headswap_diffusion.",
                ),
                io.Combo.Input(
                    "weights",
                    options=list(WEIGHT_CHOICES),
                    default="auto",
                    tooltip=(
                        "Which UNet weights of a training checkpoint to use: the EMA average (what LDM samples with) "
                        "or the live weights. auto: EMA when the file has it."
                    ),
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    tooltip="UNet weight precision; default lets ComfyUI choose for your device (fp16/bf16 on GPUs).",
                ),
                io.Boolean.Input(
                    "quantize_on_decode",
                    default=True,
                    tooltip=(
                        "VAE Decode snaps latents to the VQ codebook first, as the reference LDM does. Off: decode the "
                        "latent as it is (smoother, not the trained path)."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Vae.Output(display_name="VAE"),
                io.String.Output(
                    display_name="info",
                    tooltip="What was loaded, and a warning when the architecture had to be assumed.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs, files={"ckpt_name": CHECKPOINT_FILES})

    @classmethod
    def execute(cls, ckpt_name: str, weights: str, weight_dtype: str, quantize_on_decode: bool) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, ckpt_name)
        try:
            checkpoint = read_ldm_checkpoint(path, weights)
        except ForeignCheckpointError as e:
            raise ValueError(f"ckpt_name: {e}.{_foreign_hint(e)}") from e
        info = describe(checkpoint, ckpt_name)
        return io.NodeOutput(build_model(checkpoint, weight_dtype), build_vae(checkpoint, quantize_on_decode), info)


class HeadSwapLayoutConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapLayoutConditioning",
            display_name="Layout Conditioning (HeadSwap)",
            category="headswap/conditioning",
            description=(
                "Turns a semantic layout into the conditioning of the semantic-mixing LDM: the model encodes it "
                "with its layout encoder and sees it at every step. Connect both outputs to the sampler "
                "(positive and negative carry the same layout: the model has no unconditional branch, so use "
                "cfg 1.0). The layout's label set must be the one the model was trained with; a layout of "
                "another size is resized (nearest) to the image size of the latent."
            ),
            inputs=[
                HeadSwapLayout.Input("layout"),
                io.Combo.Input(
                    "unknown_labels",
                    options=list(UNKNOWN_CHOICES),
                    default="error",
                    tooltip=(
                        "UNKNOWN pixels (holes, white in previews) were never seen in training. error: stop and say "
                        "so (fill them with the layout generator). no class: encode them as no class at all."
                    ),
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
            ],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, layout: SemanticLayout, unknown_labels: str) -> io.NodeOutput:
        if unknown_labels not in UNKNOWN_CHOICES:
            raise ValueError(f"unknown_labels must be one of {list(UNKNOWN_CHOICES)}, got {unknown_labels!r}")
        values = {LAYOUT_KEY: layout, UNKNOWN_POLICY_KEY: UNKNOWN_CHOICES[unknown_labels]}
        empty = [[None, {}]]  # no text: cross-attention input None is legal in ComfyUI's conditioning
        positive = node_helpers.conditioning_set_values(empty, values)
        negative = node_helpers.conditioning_set_values(empty, values)
        return io.NodeOutput(positive, negative)


class HeadSwapSaveDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapSaveDiffusion",
            display_name="Save Semantic-Mixing LDM (HeadSwap)",
            category="headswap/loaders",
            description=(
                "Saves a semantic-mixing LDM (e.g. with a LoRA applied, or merged) with its VQ autoencoder as one "
                ".safetensors file in the output folder, which Load Semantic-Mixing LDM reads back from "
                "models/headswap_diffusion: UNet, layout encoder τ_θ, autoencoder and architecture."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Load Semantic-Mixing LDM (patches are baked in)."),
                io.Vae.Input("vae", tooltip="The VAE from Load Semantic-Mixing LDM."),
                io.String.Input("filename_prefix", default="headswap_diffusion/hs_ldm"),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, model, vae, filename_prefix: str) -> io.NodeOutput:
        if not isinstance(getattr(model, "model", None), HeadSwapDiffusionModel):
            raise ValueError(
                f"model: this node saves a semantic-mixing LDM, got a {type(getattr(model, 'model', model)).__name__}; "
                f"save other models with the core Checkpoint Save node"
            )
        if not isinstance(vae, HeadSwapVQVAE):
            raise ValueError(
                f"vae: expected the VQ autoencoder from Load Semantic-Mixing LDM, got a {type(vae).__name__}; the "
                f"loader needs the model's own autoencoder in the file"
            )
        folder, name, counter, _, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        metadata = {}
        hidden = cls.hidden  # set by ComfyUI's executor; None when the node is called directly
        if not args.disable_metadata and hidden is not None:
            metadata["prompt"] = json.dumps(hidden.prompt)
            for key, value in (hidden.extra_pnginfo or {}).items():
                metadata[key] = json.dumps(value)
        path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
        comfy.sd.save_checkpoint(path, model, vae=vae, metadata=metadata)
        apply_umask(path)  # safetensors leaves 0600
        logger.info("Saved the semantic-mixing LDM to %s", path)
        return io.NodeOutput()


NODES = [HeadSwapDiffusionLoader, HeadSwapLayoutConditioning, HeadSwapSaveDiffusion]
