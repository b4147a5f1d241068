"""The semantic-mixing sampler nodes (docs/method.md §9): a KSampler, a GUIDER for SamplerCustomAdvanced, and a
chainable list of further sources. The guider they build lives in nodes/semantic_mix_guider.py.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..hs_models.mixing import NOISE_MODES, SOFT_MASK_MODES, MixOptions
from .semantic_mix_guider import MixSource, as_mask, build_guider
from .sources import CANVAS_KEY
from .types import HeadSwapMixSources
from .validation import validate_schema_values

CATEGORY = "headswap/sampling"
CFG_TOOLTIP = (
    "Classifier-free guidance. SD-family models: as with the core KSampler (5–8). The semantic-mixing LDM: 1.0; its "
    "negative carries the same layout as its positive, so higher values give the same result at twice the time."
)


# --------------------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------------------


def _mixing_inputs() -> list:
    """The source and mixing inputs shared by the KSampler and the guider, in widget order."""
    return [
        io.Latent.Input("head_latent", tooltip="Head source latent (from Encode Sources)."),
        io.Mask.Input(
            "head_mask",
            tooltip="1 where the head source is kept. At latent size or at the encoded image size (then a latent "
            "cell is kept only where every pixel under it is kept).",
        ),
        io.Latent.Input("body_latent", tooltip="Body source latent (from Encode Sources); defines the canvas."),
        io.Mask.Input("body_mask", tooltip="1 where the body source is kept. Same sizes as head_mask."),
    ]


def _cfg_input() -> io.Float.Input:
    """The classifier-free guidance scale, the same for the sampler and the guider."""
    return io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=CFG_TOOLTIP)


def _option_inputs() -> list:
    return [
        io.Combo.Input(
            "noise_mode",
            options=list(NOISE_MODES),
            default="shared",
            tooltip="How the kept sources are re-noised before every model call. shared: with the run's initial "
            "noise (the seed's noise; the ddim sampler draws it from seed + 1, as core does): exactly ComfyUI's "
            "latent noise-mask inpainting. fresh: a new draw every step, the same draw for every source (the "
            "paper's q-sampling); every model call of one step (Heun, DPM-2, …) sees that step's draw and mask. "
            "Use fresh with ddim/euler for the paper's sampler: multistep samplers (dpmpp_2m/3m, uni_pc, deis, "
            "ipndm) carry the step-to-step change of the fresh draw near the seam on in their history.",
        ),
        io.Float.Input(
            "fusion_start",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fraction of the steps after which the sources are fused in (0 = from the first step).",
        ),
        io.Float.Input(
            "fusion_end",
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fraction of the steps after which fusion stops (1 = until the end). Ending at e.g. 0.9 lets "
            "the model harmonise colour across the seam in the last steps; with final_fusion the sources still "
            "come back exactly at the end.",
        ),
        io.String.Input(
            "mask_dilation",
            default="",
            tooltip="Progressive mask schedule: radii in latent cells by which the transition region grows, most "
            "dilated first, e.g. '3, 2, 1, 0'. The steps are cut into that many equal stages. Empty = off.",
        ),
        io.Combo.Input(
            "soft_masks",
            options=list(SOFT_MASK_MODES),
            default="blend",
            tooltip="How grey mask values (calibration bands, feathered edges) act. blend: a keep value v mixes "
            "source and generation by v at every step; with fresh noise the source's noise is scaled so the grey "
            "band stays at the step's noise level. by noise level: a keep value v keeps that cell for the first "
            "fraction v of the steps (thresholds v against the step's position), then generates it, so soft bands "
            "are fixed early and harmonised late; cells with v = 1 are always kept.",
        ),
        io.Boolean.Input(
            "final_fusion",
            default=True,
            tooltip="Put the clean source latents back after the last step (the paper), so kept regions equal "
            "the sources exactly.",
        ),
        HeadSwapMixSources.Input(
            "sources",
            optional=True,
            tooltip="Further sources (Mix Source nodes), layered over the head and body in chain order.",
        ),
    ]


_DESCRIPTION_TAIL = (
    " Masks: 1 = keep that source, 0 = generate; whatever no source keeps is the transition region the model "
    "generates. Works with any MODEL: SD1.5/SDXL and their inpainting variants (the inpainting inputs are set "
    "up from Encode Sources), the HeadSwap diffusion model (its layout comes through the conditioning), with "
    "your prompts, LoRAs and ControlNets upstream."
)


class HeadSwapSemanticMixingKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapSemanticMixingKSampler",
            display_name="Semantic-Mixing KSampler (HeadSwap)",
            category=CATEGORY,
            description=(
                "A KSampler that fuses source latents into the sample at every step (HS-Diffusion's semantic "
                "mixing): the head and body latents, re-noised to the current noise level, are pasted into their "
                "regions, the transition region is generated, and the clean sources are put back at the end."
                + _DESCRIPTION_TAIL
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                *_mixing_inputs(),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=20, min=1, max=10000),
                _cfg_input(),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="1.0 generates the transition from pure noise (the paper). Below 1 it starts from the "
                    "body latent there, to refine an earlier result given as the body source.",
                ),
                *_option_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(
        cls, model, positive, negative, head_latent, head_mask, body_latent, body_mask, seed, steps, cfg,
        sampler_name, scheduler, denoise, noise_mode, fusion_start, fusion_end, mask_dilation, soft_masks,
        final_fusion, sources=None,
    ) -> io.NodeOutput:  # fmt: skip
        options = MixOptions.from_widgets(noise_mode, fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion)
        guider = build_guider(
            model, positive, negative, cfg, head_latent, head_mask, body_latent, body_mask, sources, options
        )
        body = guider.sources.latents[0]
        init = torch.zeros_like(body) if denoise >= 0.9999 else body.clone()
        noise = comfy.sample.prepare_noise(init, seed, guider.batch_index)
        ksampler = comfy.samplers.KSampler(
            model, steps=steps, device=model.load_device, sampler=sampler_name, scheduler=scheduler,
            denoise=denoise, model_options=model.model_options,
        )  # fmt: skip
        callback = latent_preview.prepare_callback(model, steps)
        samples = guider.sample(
            noise, init, comfy.samplers.sampler_object(sampler_name), ksampler.sigmas, callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )  # fmt: skip
        out = {k: v for k, v in body_latent.items() if k not in ("noise_mask", CANVAS_KEY)}
        out["samples"] = samples.to(comfy.model_management.intermediate_device())
        return io.NodeOutput(out)

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return _validate_options(cls, inputs)


class HeadSwapSemanticMixGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapSemanticMixGuider",
            display_name="Semantic-Mix Guider (HeadSwap)",
            category=CATEGORY,
            description=(
                "The Semantic-Mixing KSampler as a GUIDER for SamplerCustomAdvanced, to combine it with any "
                "sampler, sigmas and noise node. Give SamplerCustomAdvanced a latent of the sources' canvas: "
                "the transition region starts from it (an empty latent = pure noise, the paper; the body latent "
                "with partial sigmas = refinement)." + _DESCRIPTION_TAIL
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                *_mixing_inputs(),
                _cfg_input(),
                *_option_inputs(),
            ],
            outputs=[io.Guider.Output(display_name="guider")],
        )

    @classmethod
    def execute(
        cls, model, positive, negative, head_latent, head_mask, body_latent, body_mask, cfg, noise_mode,
        fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion, sources=None,
    ) -> io.NodeOutput:  # fmt: skip
        options = MixOptions.from_widgets(noise_mode, fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion)
        guider = build_guider(
            model, positive, negative, cfg, head_latent, head_mask, body_latent, body_mask, sources, options
        )
        return io.NodeOutput(guider)

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return _validate_options(cls, inputs)


def _validate_options(node_cls, inputs: dict) -> bool | str:
    """Check the typed-in values and the schedule before the graph runs (linked values arrive as None and are
    checked at run time)."""
    checked = validate_schema_values(node_cls, inputs)
    if checked is not True:
        return checked
    names = ("fusion_start", "fusion_end", "mask_dilation", "soft_masks")
    fusion_start, fusion_end, mask_dilation, soft_masks = (inputs.get(n) for n in names)
    if None in (fusion_start, fusion_end, mask_dilation, soft_masks):
        return True
    try:
        MixOptions.from_widgets(
            fusion_start=fusion_start, fusion_end=fusion_end, mask_dilation=mask_dilation, soft_masks=soft_masks
        )
    except ValueError as e:
        return str(e)
    return True


class HeadSwapMixSource(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HeadSwapMixSource",
            display_name="Mix Source (HeadSwap)",
            category=CATEGORY,
            description=(
                "Adds one more source for multi-component replacement (e.g. hair or clothes from a third image): "
                "its latent is kept where its mask is 1. Chain several; later sources are layered over earlier "
                "ones and over the head and body. The latent must be on the same canvas (same size, same VAE)."
            ),
            inputs=[
                io.Latent.Input("latent"),
                io.Mask.Input("mask", tooltip="1 where this source is kept; at latent size or the encoded image size."),
                HeadSwapMixSources.Input("sources", optional=True, tooltip="Earlier sources of the chain."),
            ],
            outputs=[HeadSwapMixSources.Output(display_name="sources")],
        )

    @classmethod
    def validate_inputs(cls, **inputs) -> bool | str:
        return validate_schema_values(cls, inputs)

    @classmethod
    def execute(cls, latent, mask, sources=None) -> io.NodeOutput:
        chain = tuple(sources or ())
        source = MixSource(latent["samples"], as_mask(mask, "mask"), f"source {len(chain) + 1}")
        return io.NodeOutput((*chain, source))


NODES = [HeadSwapSemanticMixingKSampler, HeadSwapSemanticMixGuider, HeadSwapMixSource]
