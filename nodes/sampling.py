"""The semantic-mixing sampler (method.md §9): a KSampler node, a GUIDER for SamplerCustomAdvanced, and a
chainable list of further sources.

No sampling loop of our own (comfyui.md §7): the nodes run ComfyUI's samplers, schedulers, previews,
progress bar and interrupts. Shared noise is ComfyUI's own ``noise_mask`` inpainting path (composite latent +
denoise mask, bit for bit); fresh noise per step (the paper's q-sample at every step) re-noises the sources
inside ``CFGGuider.predict_noise``; schedules that change the masks with the noise level use the
``denoise_mask_function`` hook or the same guider step.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
import torch
from comfy_api.latest import io

from ..hs_models.log import logger
from ..hs_models.mixing import (
    NOISE_MODES,
    SOFT_MASK_MODES,
    MixPlan,
    MixSchedule,
    fuse_final,
    keep_mask_to_latent,
    layer_sources,
    mix_input,
    mix_output,
    parse_dilation_schedule,
    step_noise,
)
from ._tensors import broadcast_batches
from .sources import CANVAS_KEY
from .types import HeadSwapMixSources
from .validation import validate_schema_values

CATEGORY = "headswap/sampling"


@dataclass(frozen=True)
class MixSource:
    """One further source: raw latent (B,C,h,w), keep mask (B,H,W) and a name for messages."""

    latent: torch.Tensor
    mask: torch.Tensor
    name: str


@dataclass(frozen=True)
class SourceSet:
    """Validated sources on one latent canvas, bottom layer first: latents (B,C,h,w), keeps (B,1,h,w)."""

    latents: tuple[torch.Tensor, ...]
    keeps: tuple[torch.Tensor, ...]
    names: tuple[str, ...]

    @property
    def batch(self) -> int:
        return self.latents[0].shape[0]

    @property
    def channels(self) -> int:
        return self.latents[0].shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.latents[0].shape[-2:])

    def layered(self, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(composite, keep) over a (B,C,h,w) init latent; the sources' batch must be 1 or B."""
        batch = init.shape[0]
        if self.batch not in (1, batch):
            raise ValueError(
                f"the latent to sample has batch {batch} but the sources have batch {self.batch}; give the "
                f"sampler a latent of batch {self.batch} (e.g. the body latent) or sources of batch 1"
            )
        latents = [t.expand(batch, *t.shape[1:]).to(init) for t in self.latents]
        keeps = [t.expand(batch, *t.shape[1:]).to(init) for t in self.keeps]
        return layer_sources(latents, keeps, init)


def _as_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a MASK (B,H,W), got shape {tuple(mask.shape)}")
    return mask.to(torch.float32)


def collect_sources(
    head_latent: dict,
    head_mask: torch.Tensor,
    body_latent: dict,
    body_mask: torch.Tensor,
    sources: tuple[MixSource, ...] | None,
    model_channels: int | None,
) -> SourceSet:
    """Check every source against the others and the MODEL, before any sampling; body first, head over it.

    Masks may be at latent size or at a whole multiple of it (the image size): then a latent cell is kept
    only where every pixel under it is kept.
    """
    entries = [("body_latent", body_latent["samples"], "body_mask", body_mask)]
    entries.append(("head_latent", head_latent["samples"], "head_mask", head_mask))
    for source in sources or ():
        entries.append((f"{source.name} latent", source.latent, f"{source.name} mask", source.mask))
    for latent_name, latent, _, _ in entries:
        if getattr(latent, "is_nested", False) or latent.ndim != 4:
            raise ValueError(
                f"{latent_name} has shape {tuple(latent.shape)}; the semantic-mixing sampler works on image "
                f"latents (B,C,h,w)"
            )
    base_name, base = entries[0][0], entries[0][1]
    h, w = base.shape[-2:]
    for latent_name, latent, _, _ in entries[1:]:
        if latent.shape[-2:] != base.shape[-2:]:
            raise ValueError(
                f"latents of different sizes: {base_name} is {w}×{h} and {latent_name} is "
                f"{latent.shape[-1]}×{latent.shape[-2]} (latent cells); encode all sources on one canvas, e.g. "
                f"with Encode Sources (HeadSwap) after aligning the head onto the body image"
            )
        if latent.shape[1] != base.shape[1]:
            raise ValueError(
                f"{base_name} has {base.shape[1]} channels but {latent_name} has {latent.shape[1]}; encode every "
                f"source with the same VAE"
            )
    if model_channels is not None and base.shape[1] != model_channels:
        raise ValueError(
            f"the source latents have {base.shape[1]} channels but the MODEL works on {model_channels}-channel "
            f"latents; encode the images with the VAE that belongs to this MODEL"
        )
    latents, keeps, named = [], [], []
    for latent_name, latent, mask_name, mask in entries:
        mask = _as_mask(mask, mask_name)
        mh, mw = mask.shape[-2:]
        if (mh, mw) != (h, w) and (mh % h or mw % w or mh // h != mw // w):
            raise ValueError(
                f"{mask_name} is {mw}×{mh} but the latent canvas is {w}×{h} cells; give the mask at the latent "
                f"size or at a whole multiple of it (the size of the encoded image)"
            )
        latents.append((latent_name, latent.to(torch.float32)))
        keeps.append((mask_name, keep_mask_to_latent(mask.clamp(0.0, 1.0), (h, w)).unsqueeze(1)))
        named.append(latent_name.removesuffix("_latent").removesuffix(" latent"))
    expand = broadcast_batches(*latents, *keeps)
    return SourceSet(tuple(expand[: len(latents)]), tuple(expand[len(latents) :]), tuple(named))


def is_inpainting_model(model) -> bool:
    """9-channel SD-style inpainting models take (mask, masked image) as extra input channels."""
    return "masked_image" in getattr(model.model, "concat_keys", ())


def inpaint_conditioning(model, positive, negative, canvas, sources: SourceSet):
    """Set an inpainting MODEL's concat inputs as core's InpaintModelConditioning does; others unchanged.

    The masked image is the encoded grey-transition canvas from Encode Sources; the mask is the transition.
    Conditioning that already carries ``concat_latent_image`` (InpaintModelConditioning upstream) is kept.
    """
    if not is_inpainting_model(model):
        return positive, negative
    if all("concat_latent_image" in c[1] for c in positive + negative):
        return positive, negative
    zeros = torch.zeros_like(sources.latents[0])
    composite, keep = sources.layered(zeros)
    if canvas is not None:
        masked_image = canvas.encode()
        if tuple(masked_image.shape[-2:]) != sources.size:
            raise ValueError(
                f"the inpainting canvas from Encode Sources encodes to {masked_image.shape[-1]}×"
                f"{masked_image.shape[-2]} cells but the latents are {sources.size[1]}×{sources.size[0]}; encode "
                f"the sources and the canvas in the same Encode Sources node"
            )
    else:
        logger.warning(
            "The MODEL is an inpainting model but the source latents do not come from Encode Sources (HeadSwap); "
            "its masked-image input uses the latent composite instead (an approximation)."
        )
        masked_image = composite
    values = {"concat_latent_image": masked_image, "concat_mask": 1.0 - keep}
    return (
        node_helpers.conditioning_set_values(positive, values),
        node_helpers.conditioning_set_values(negative, values),
    )


@dataclass
class _Run:
    """State of one sampling run of a :class:`SemanticMixGuider`."""

    plan: MixPlan
    composite: torch.Tensor  # raw latent space, (B,C,h,w)
    sigmas: torch.Tensor
    seed: int
    composite_in: torch.Tensor | None = None  # model space, on the sampling device
    noise_step: int = -1
    noise: torch.Tensor | None = None


class SemanticMixGuider(comfy.samplers.CFGGuider):
    """CFG guidance with semantic mixing of source latents (method.md §9.3).

    ``latent_image`` given to :meth:`sample` is where the transition region starts from (zeros: pure noise,
    as in the paper); its size must be the sources' canvas.
    """

    def __init__(
        self,
        model_patcher,
        sources: SourceSet,
        noise_mode: str = "shared",
        schedule: MixSchedule | None = None,
        final_fusion: bool = True,
        batch_index: list[int] | None = None,
    ):
        super().__init__(model_patcher)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        self.sources = sources
        self.noise_mode = noise_mode
        self.schedule = schedule or MixSchedule()
        self.final_fusion = final_fusion
        self.batch_index = batch_index
        self._run: _Run | None = None

    def sample(
        self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None
    ):
        if getattr(latent_image, "is_nested", False) or latent_image.ndim != 4:
            raise ValueError(f"the latent to sample has shape {tuple(latent_image.shape)}; expected (B,C,h,w)")
        if tuple(latent_image.shape[-2:]) != self.sources.size or latent_image.shape[1] != self.sources.channels:
            h, w = self.sources.size
            raise ValueError(
                f"the latent to sample is {latent_image.shape[-1]}×{latent_image.shape[-2]} cells with "
                f"{latent_image.shape[1]} channels but the sources are {w}×{h} with {self.sources.channels}; give "
                f"the sampler a latent of the sources' canvas (e.g. the body latent or an empty latent of that size)"
            )
        if denoise_mask is not None:
            logger.warning(
                "The latent's noise_mask is ignored: the semantic-mixing guider takes its masks from the sources."
            )
        composite, keep = self.sources.layered(latent_image.to(torch.float32))
        if self.final_fusion and bool((keep >= 1.0).all()):
            logger.info("Every latent cell is kept: the semantic-mixing sampler returns the sources unchanged.")
            return composite
        if not bool((keep > 0).any()):
            return super().sample(noise, latent_image, sampler, sigmas, None, callback, disable_pbar, seed)

        device = self.model_patcher.load_device
        comfy.model_management.throw_exception_if_processing_interrupted()  # the plan's dilations can take a while
        plan = MixPlan(keep.to(device), sigmas, self.schedule)
        self._run = _Run(plan, composite, sigmas, 0 if seed is None else int(seed))
        original_options = self.model_options
        try:
            if self.noise_mode == "shared":
                if not self.schedule.is_static:
                    self.model_options = comfy.model_patcher.create_model_options_clone(original_options)
                    self.model_options["denoise_mask_function"] = self._mask_function(
                        original_options.get("denoise_mask_function")
                    )
                samples = super().sample(noise, composite, sampler, sigmas, 1.0 - keep, callback, disable_pbar, seed)
            else:
                samples = super().sample(noise, composite, sampler, sigmas, None, callback, disable_pbar, seed)
        finally:
            self.model_options = original_options
            self._run = None
        if self.final_fusion:
            samples = fuse_final(samples, composite.to(samples), plan.final_keep.to(samples))
        return samples

    def _mask_function(self, previous):
        """``denoise_mask_function`` for shared noise with a schedule: the plan's mask at σ, then ``previous``."""
        plan = self._run.plan

        def mask_at_sigma(sigma, denoise_mask, extra_options, **kwargs):
            transition = plan.transition(sigma)
            mask = torch.ones_like(denoise_mask) if transition is None else transition.to(denoise_mask)
            return mask if previous is None else previous(sigma, mask, extra_options)

        return mask_at_sigma

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (core's signature)
        run = self._run
        if run is None or self.noise_mode == "shared":
            return super().predict_noise(x, timestep, model_options, seed)
        transition = run.plan.transition(timestep)
        previous = model_options.get("denoise_mask_function")
        if transition is not None and previous is not None:
            transition = previous(timestep, transition, {"model": self, "sigmas": run.sigmas})
        if transition is None:
            return super().predict_noise(x, timestep, model_options, seed)
        transition = transition.to(x)
        composite = self._composite_in(run, x)
        # core KSamplerX0Inpaint's keywords (newer ComfyUI adds denoise_mask; all overrides accept **kwargs)
        known = self.inner_model.scale_latent_inpaint(
            x=x, sigma=timestep, noise=self._fresh_noise(run, run.plan.step_of(timestep), x), latent_image=composite,
            denoise_mask=transition,
        )  # fmt: skip
        denoised = super().predict_noise(mix_input(x, transition, known), timestep, model_options, seed)
        return mix_output(denoised, transition, composite)

    def _composite_in(self, run: _Run, x: torch.Tensor) -> torch.Tensor:
        if run.composite_in is None:
            composite = run.composite.to(x)
            # As CFGGuider.inner_sample: an all-zero latent is not shifted into model space.
            if torch.count_nonzero(composite) > 0:
                composite = self.inner_model.process_latent_in(composite)
            run.composite_in = composite
        return run.composite_in

    def _fresh_noise(self, run: _Run, step: int, x: torch.Tensor) -> torch.Tensor:
        if run.noise_step != step:
            index = self.batch_index if self.batch_index and len(self.batch_index) == x.shape[0] else None
            run.noise = step_noise(run.seed, step, x.shape, index).to(x)
            run.noise_step = step
        return run.noise


def mix_schedule(fusion_start: float, fusion_end: float, mask_dilation: str, soft_masks: str) -> MixSchedule:
    return MixSchedule(fusion_start, fusion_end, parse_dilation_schedule(mask_dilation), soft_masks)


def build_guider(
    model, positive, negative, cfg, head_latent, head_mask, body_latent, body_mask, sources,
    noise_mode, fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion,
) -> SemanticMixGuider:  # fmt: skip
    """Validate everything, set up inpainting inputs, and return a ready guider (no sampling yet)."""
    schedule = mix_schedule(fusion_start, fusion_end, mask_dilation, soft_masks)
    channels = model.get_model_object("latent_format").latent_channels
    source_set = collect_sources(head_latent, head_mask, body_latent, body_mask, sources, channels)
    canvas = body_latent.get(CANVAS_KEY) or head_latent.get(CANVAS_KEY)
    positive, negative = inpaint_conditioning(model, positive, negative, canvas, source_set)
    batch_index = body_latent.get("batch_index")
    guider = SemanticMixGuider(model, source_set, noise_mode, schedule, final_fusion, batch_index)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


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


def _option_inputs() -> list:
    return [
        io.Combo.Input(
            "noise_mode",
            options=list(NOISE_MODES),
            default="shared",
            tooltip="shared: the sources are re-noised with the run's initial noise at every step (exactly "
            "ComfyUI's latent noise-mask inpainting). fresh: a new noise draw every step, as the paper's "
            "q-sampling (the same draw for every source).",
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
            tooltip="How grey mask values (calibration bands) act. blend: a keep value v mixes source and "
            "generation by v at every step. by noise level: v is the fraction of the steps during which that "
            "pixel is kept, so soft bands are fixed early and harmonised late.",
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
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
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
        guider = build_guider(
            model, positive, negative, cfg, head_latent, head_mask, body_latent, body_mask, sources,
            noise_mode, fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion,
        )  # fmt: skip
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
                io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                *_option_inputs(),
            ],
            outputs=[io.Guider.Output(display_name="guider")],
        )

    @classmethod
    def execute(
        cls, model, positive, negative, head_latent, head_mask, body_latent, body_mask, cfg, noise_mode,
        fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion, sources=None,
    ) -> io.NodeOutput:  # fmt: skip
        guider = build_guider(
            model, positive, negative, cfg, head_latent, head_mask, body_latent, body_mask, sources,
            noise_mode, fusion_start, fusion_end, mask_dilation, soft_masks, final_fusion,
        )  # fmt: skip
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
        mix_schedule(fusion_start, fusion_end, mask_dilation, soft_masks)
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
        source = MixSource(latent["samples"], _as_mask(mask, "mask"), f"source {len(chain) + 1}")
        return io.NodeOutput((*chain, source))


NODES = [HeadSwapSemanticMixingKSampler, HeadSwapSemanticMixGuider, HeadSwapMixSource]
