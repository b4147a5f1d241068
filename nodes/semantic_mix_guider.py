"""The semantic-mixing guider (docs/method.md §9): ComfyUI's CFGGuider with the sources fused in at every step,
and the checks and conditioning it needs. The nodes in nodes/sampling.py build it; SamplerCustomAdvanced runs it.

No sampling loop of our own (comfyui.md §7): ComfyUI's samplers, schedulers, previews, progress bar and
interrupts run it. Shared noise is ComfyUI's own ``noise_mask`` inpainting path (composite latent + denoise
mask, bit for bit); fresh noise per step (the paper's q-sample at every step) runs
:func:`hs_models.mixing.mix_step` inside ``CFGGuider.predict_noise`` with the model's own noise scaling and
latent space; schedules that change the masks with the step use the ``denoise_mask_function`` hook (shared)
or the same step (fresh).
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.samplers
import node_helpers
import torch

from ..hs_models.log import logger
from ..hs_models.mixing import (
    MixOptions,
    MixPlan,
    StepClock,
    fuse_final,
    keep_mask_to_latent,
    layer_sources,
    mix_step,
    step_noise,
)
from . import compat
from ._tensors import broadcast_batches
from .sources import CANVAS_KEY

# k-diffusion samplers whose corrector evaluates at the next step's σ (after the step's callback)
CORRECTOR_AT_NEXT_SIGMA = ("sample_heun", "sample_heunpp2")


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


def as_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
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
        mask = as_mask(mask, mask_name)
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
    clock: StepClock
    composite: torch.Tensor  # raw latent space, (B,C,h,w)
    sigmas: torch.Tensor
    seed: int
    composite_in: torch.Tensor | None = None  # model space, on the sampling device
    noise_step: int = -1
    noise: torch.Tensor | None = None


def corrects_at_next_sigma(sampler) -> bool:
    """Whether a SAMPLER's corrector evaluates at the next step's σ (Heun, Heun++): see StepClock."""
    function = getattr(sampler, "sampler_function", None)
    return getattr(function, "__name__", "") in CORRECTOR_AT_NEXT_SIGMA


class SemanticMixGuider(comfy.samplers.CFGGuider):
    """CFG guidance with semantic mixing of source latents (docs/method.md §9.3).

    ``latent_image`` given to :meth:`sample` is where the transition region starts from (zeros: pure noise,
    as in the paper); its size must be the sources' canvas.
    """

    def __init__(
        self,
        model_patcher,
        sources: SourceSet,
        options: MixOptions | None = None,
        batch_index: list[int] | None = None,
    ):
        super().__init__(model_patcher)
        self.sources = sources
        self.options = options or MixOptions()
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
        options = self.options
        composite, keep = self.sources.layered(latent_image.to(torch.float32))
        if options.final_fusion and bool((keep >= 1.0).all()):
            logger.info("Every latent cell is kept: the semantic-mixing sampler returns the sources unchanged.")
            return composite
        if not bool((keep > 0).any()):
            return super().sample(noise, latent_image, sampler, sigmas, None, callback, disable_pbar, seed)

        device = self.model_patcher.load_device
        comfy.model_management.throw_exception_if_processing_interrupted()  # the plan's dilations can take a while
        plan = MixPlan(keep.to(device), sigmas, options)
        clock = StepClock(sigmas, corrects_at_next_sigma(sampler))
        self._run = _Run(plan, clock, composite, sigmas, 0 if seed is None else int(seed))

        def on_step(step, denoised, x, total_steps):
            clock.step_done(step)
            if callback is not None:
                callback(step, denoised, x, total_steps)

        original_options = self.model_options
        try:
            if options.noise_mode == "shared":
                if not options.is_static:
                    self.model_options = comfy.model_patcher.create_model_options_clone(original_options)
                    self.model_options["denoise_mask_function"] = self._mask_function(
                        original_options.get("denoise_mask_function")
                    )
                samples = super().sample(noise, composite, sampler, sigmas, 1.0 - keep, on_step, disable_pbar, seed)
            else:
                samples = super().sample(noise, composite, sampler, sigmas, None, on_step, disable_pbar, seed)
        finally:
            self.model_options = original_options
            self._run = None
        if options.final_fusion:
            samples = fuse_final(samples, composite.to(samples), plan.final_keep.to(samples))
        return samples

    def _mask_function(self, previous):
        """``denoise_mask_function`` for shared noise with a schedule: the plan's mask of this step, then
        ``previous`` (an upstream hook)."""
        run = self._run

        def mask_of_step(sigma, denoise_mask, extra_options, **kwargs):
            transition = run.plan.transition(run.clock.step_of(sigma))
            mask = torch.ones_like(denoise_mask) if transition is None else transition.to(denoise_mask)
            return mask if previous is None else previous(sigma, mask, extra_options)

        return mask_of_step

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (core's signature)
        run = self._run
        if run is None or self.options.noise_mode == "shared":
            return super().predict_noise(x, timestep, model_options, seed)
        step = run.clock.step_of(timestep)
        transition = run.plan.transition(step)
        previous = model_options.get("denoise_mask_function")
        if transition is not None and previous is not None:
            transition = previous(timestep, transition, {"model": self, "sigmas": run.sigmas})
        if transition is None:
            return super().predict_noise(x, timestep, model_options, seed)
        transition = transition.to(x)

        def denoise(mixed):
            return super(SemanticMixGuider, self).predict_noise(mixed, timestep, model_options, seed)

        def noise_scaling(sigma, noise, clean):
            return compat.scale_latent_inpaint(self.inner_model, x, sigma, noise, clean, transition)

        noise = self._fresh_noise(run, step, x)
        return mix_step(denoise, x, timestep, transition, self._composite_in(run, x), noise, noise_scaling)

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


def is_headswap_ldm(model) -> bool:
    """Whether a MODEL is the semantic-mixing LDM (its layout arrives through the conditioning)."""
    from .diffusion_model import HeadSwapDiffusionModel

    return isinstance(getattr(model, "model", None), HeadSwapDiffusionModel)


def sampler_warnings(model, cfg: float) -> list[str]:
    """Advice on the sampler's settings for this MODEL, one message per finding (logged by :func:`build_guider`).

    The semantic-mixing LDM's negative conditioning carries the same layout as the positive one (it has no
    unconditional branch), so cfg above 1 gives the same result as 1.0 and only doubles the sampling time.
    """
    warnings = []
    if cfg != 1.0 and is_headswap_ldm(model):
        warnings.append(
            f"cfg {cfg:g} with the semantic-mixing LDM: its positive and negative conditioning carry the same "
            f"layout, so any cfg gives the result of cfg 1.0 and cfg ≠ 1 only doubles the sampling time; set cfg "
            f"to 1.0"
        )
    return warnings


def build_guider(
    model, positive, negative, cfg, head_latent, head_mask, body_latent, body_mask, sources, options: MixOptions
) -> SemanticMixGuider:
    """Validate everything, set up inpainting inputs, and return a ready guider (no sampling yet)."""
    channels = model.get_model_object("latent_format").latent_channels
    source_set = collect_sources(head_latent, head_mask, body_latent, body_mask, sources, channels)
    canvas = body_latent.get(CANVAS_KEY) or head_latent.get(CANVAS_KEY)
    positive, negative = inpaint_conditioning(model, positive, negative, canvas, source_set)
    for message in sampler_warnings(model, cfg):
        logger.warning(message)
    guider = SemanticMixGuider(model, source_set, options, body_latent.get("batch_index"))
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
