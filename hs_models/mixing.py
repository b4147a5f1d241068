"""Semantic mixing (progressive fusion) of source latents during diffusion sampling, method.md §9.

Everything here works in k-diffusion's σ-parameterisation, where a noisy latent is ``x_σ = z + σ·ε`` and a
denoiser maps ``(x, σ) → x̂0``; for ε-prediction models this is exactly the paper's ᾱ-space fusion
(comfyui.md §6). Mask convention (shared with the layout nodes): a *keep* mask is 1 where a source is
kept, and the *transition* mask ``t = 1 − keep`` is 1 where the model generates.

Per step, at noise level σ (method.md §9.3, [INFER] formalisation of the paper's figure)::

    x   ← t ⊙ x + (1 − t) ⊙ (c + σ·ε)       # sources re-noised to the current level, pasted in
    x̂0 ← t ⊙ D(x, σ) + (1 − t) ⊙ c         # known regions of every prediction are the clean sources
    final: z ← t_final ⊙ z + (1 − t_final) ⊙ c

where ``c`` is the composite of the sources. ε is one draw shared by every source (method.md §9.4), either
the sampler's initial noise for the whole run ("shared": exactly ComfyUI's ``noise_mask`` inpainting) or a
new draw per step ("fresh": the paper's q-sample at every step).

Schedules [PROPOSAL] (method.md §9.3 knobs): the *fusion window* limits fusion to a fraction of the
trajectory; the *dilation schedule* grows the transition region early in the trajectory and shrinks it
stage by stage (BLD's progressive masks, method.md §9.2); *soft masks by noise level* read a keep value v
as "keep this pixel for the first v of the trajectory, then regenerate it", so calibration bands
harmonise late. Every mask is a pure function of σ, because multi-evaluation samplers (Heun, DPM-2,
DPM++ SDE, …) call the denoiser several times per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

NOISE_MODES = ("shared", "fresh")
SOFT_MASK_MODES = ("blend", "by noise level")

Denoiser = Callable[..., torch.Tensor]
"""k-diffusion contract: ``denoiser(x, sigma, **extra_args) -> x̂0``."""

NoiseScaling = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``noise_scaling(sigma, noise, clean) -> noisy``: how a clean latent is noised to level σ."""


def eps_noise_scaling(sigma: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``clean + σ·noise``: forward noising of an ε-prediction model in σ-space (comfyui.md §6)."""
    sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device).reshape(-1, *([1] * (noise.ndim - 1)))
    return noise * sigma + clean


@dataclass(frozen=True)
class MixSchedule:
    """How the fusion masks change over the sampling trajectory (method.md §9.3 knobs, [PROPOSAL]).

    fusion_start, fusion_end  fraction of the steps (0 = first step, 1 = after the last) during which the
                              sources are fused in; outside the window the model generates everywhere
    dilation                  BLD-style schedule of transition-region dilation radii in latent cells, most
                              dilated first; the trajectory is cut into len(dilation) near-equal stages
    soft_masks                "blend": a keep value v mixes source and generation by v at every step
                              (ComfyUI's inpainting); "by noise level": v is the fraction of the trajectory
                              during which the pixel is kept (pixels with v = 1 are always kept)
    """

    fusion_start: float = 0.0
    fusion_end: float = 1.0
    dilation: tuple[int, ...] = ()
    soft_masks: str = "blend"

    def __post_init__(self) -> None:
        if not (0.0 <= self.fusion_start < self.fusion_end <= 1.0):
            raise ValueError(
                f"fusion window start {self.fusion_start} / end {self.fusion_end} must satisfy "
                f"0 ≤ start < end ≤ 1 (fractions of the sampling schedule; 0 = first step, 1 = the end)"
            )
        if any(r < 0 for r in self.dilation):
            raise ValueError(f"mask dilation radii must be ≥ 0 latent cells, got {list(self.dilation)}")
        if self.soft_masks not in SOFT_MASK_MODES:
            raise ValueError(f"soft_masks must be one of {SOFT_MASK_MODES}, got {self.soft_masks!r}")

    @property
    def is_static(self) -> bool:
        """True when the masks are the same at every step (the plain inpainting path applies unchanged)."""
        return (
            self.fusion_start <= 0.0
            and self.fusion_end >= 1.0
            and not any(self.dilation)
            and self.soft_masks == "blend"
        )


def parse_dilation_schedule(text: str) -> tuple[int, ...]:
    """``"3, 2, 1, 0"`` → ``(3, 2, 1, 0)``: dilation radii in latent cells, most dilated first (BLD §9.2)."""
    text = text.strip()
    if not text:
        return ()
    radii = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(
                f"mask dilation schedule {text!r}: {part!r} is not a whole number; write radii in latent cells "
                f"separated by commas, most dilated first (e.g. '3, 2, 1, 0'), or leave it empty"
            ) from None
        if value < 0:
            raise ValueError(f"mask dilation schedule {text!r}: radius {value} is negative; radii must be ≥ 0")
        radii.append(value)
    return tuple(radii)


# --------------------------------------------------------------------------------------------------------
# Masks and composites
# --------------------------------------------------------------------------------------------------------


def keep_mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,H,W) pixel keep mask → (B,h,w): each latent cell keeps the *smallest* value of the pixels it covers.

    Preserved regions therefore shrink and never bleed: a cell is fully kept only when every pixel under it
    is kept [PROPOSAL, method.md §7 step 4]. ``H/h`` and ``W/w`` must be the same whole factor.
    """
    h, w = size
    height, width = mask.shape[-2:]
    if (height, width) == (h, w):
        return mask
    factor = height // h
    if height % h or width % w or width // w != factor:
        raise ValueError(f"a {width}×{height} mask does not cover a {w}×{h} latent canvas by a whole factor")
    return -F.max_pool2d(-mask.unsqueeze(1), kernel_size=factor).squeeze(1)


def layer_sources(
    latents: Sequence[torch.Tensor], keeps: Sequence[torch.Tensor], init: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite source latents, later sources over earlier ones; returns ``(composite, keep)``.

    latents: (B,C,h,w) each; keeps: (B,1,h,w) each, 0..1; init: (B,C,h,w), used where nothing is kept.
    Where the sources are kept the composite is their normalised blend, so soft edges are not darkened by
    multiplying with the mask twice; with binary disjoint masks it is exactly ``Σ keep_k ⊙ z_k``
    (method.md §9.4: K-source fusion is single-composite inpainting).
    """
    blend = torch.zeros_like(init)
    keep = torch.zeros_like(init[:, :1])
    for latent, mask in zip(latents, keeps, strict=True):
        blend = blend * (1.0 - mask) + latent * mask
        keep = keep * (1.0 - mask) + mask
    composite = torch.where(keep > 0, blend / keep.clamp_min(torch.finfo(keep.dtype).tiny), init)
    return composite, keep


def useful_radius(radius: int, size: Sequence[int]) -> int:
    """The smallest radius with the same effect as ``radius`` on an (h, w) mask: a disc wider than the
    diagonal already reaches every cell from every cell, so larger radii change nothing (and cost k²)."""
    h, w = size
    return max(0, min(int(radius), math.ceil(math.hypot(h, w))))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation of a (B,1,h,w) mask by a disc of ``radius`` cells (kornia); radii beyond the mask's
    diagonal are capped (:func:`useful_radius`)."""
    radius = useful_radius(radius, mask.shape[-2:])
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    yy, xx = torch.meshgrid(torch.arange(size) - radius, torch.arange(size) - radius, indexing="ij")
    disc = ((yy**2 + xx**2) <= radius**2 + radius).to(mask.dtype).to(mask.device)
    return kornia.morphology.dilation(mask, disc, border_type="geodesic")


# --------------------------------------------------------------------------------------------------------
# The schedule over the trajectory
# --------------------------------------------------------------------------------------------------------


def step_index(sigma: float, sigmas: Sequence[float]) -> int:
    """The step a noise level belongs to: the last step whose starting σ is ≥ σ (pure function of σ)."""
    steps = len(sigmas) - 1
    tolerance = 1e-5 * max(sigma, 1e-8)
    index = 0
    for i in range(steps):
        if sigmas[i] >= sigma - tolerance:
            index = i
        else:
            break
    return index


def dilation_stage(step: int, steps: int, stages: int) -> int:
    """The dilation stage of step i of S: n near-equal stages, stage ⌊i·n / S⌋ (most dilated first).

    BLD's rule (method.md §9.2: intervals of ⌊S / n⌋ + 1 steps) can leave the last masks unused, e.g. 6 steps
    with 4 masks never reach the fourth; with equal stages every mask runs once S ≥ n and the last step
    always uses the last mask, the one the final fusion keeps [PROPOSAL].
    """
    return min(step * stages // steps, stages - 1)


def fusion_active(step: int, steps: int, schedule: MixSchedule) -> bool:
    """Whether step ``step`` of ``steps`` lies in the fusion window (positions i / steps, 0 = first step)."""
    position = step / steps
    return schedule.fusion_start - 1e-9 <= position < schedule.fusion_end - 1e-9


def transition_at(
    keep: torch.Tensor, step: int, steps: int, schedule: MixSchedule, dilated: torch.Tensor | None = None
) -> torch.Tensor | None:
    """(B,1,h,w) transition mask (1 = generate) used at ``step``; None when no fusion happens at that step.

    ``dilated`` may hold this step's stage of ``1 − keep`` already dilated. Thresholding by noise level comes
    after the (grey) dilation: a max filter commutes with thresholds, so one dilation serves a whole stage.
    """
    if not fusion_active(step, steps, schedule):
        return None
    transition = dilated
    if transition is None:
        transition = 1.0 - keep
        if schedule.dilation:
            transition = dilate(transition, schedule.dilation[dilation_stage(step, steps, len(schedule.dilation))])
    if schedule.soft_masks == "by noise level":
        # keep value v is kept while the position i / steps is below v, i.e. generated once 1 − v ≥ 1 − i / steps
        transition = (transition >= 1.0 - step / steps).to(keep.dtype)
    return transition


def final_keep(keep: torch.Tensor, steps: int, schedule: MixSchedule) -> torch.Tensor:
    """Keep mask of the final fusion: the mask of the trajectory's last step (its dilation stage), so the
    clean sources come back exactly where the last step kept them and never over a generated ring."""
    if schedule.soft_masks == "by noise level":
        keep = (keep >= 1.0).to(keep.dtype)
    if schedule.dilation:
        stage = dilation_stage(steps - 1, steps, len(schedule.dilation))
        keep = 1.0 - dilate(1.0 - keep, schedule.dilation[stage])
    return keep


class MixPlan:
    """Transition masks for every step of one sampling run, precomputed and looked up by σ.

    keep: (B,1,h,w) keep mask on the sampling device; sigmas: the run's schedule (steps + 1 values).
    """

    def __init__(self, keep: torch.Tensor, sigmas: Sequence[float] | torch.Tensor, schedule: MixSchedule):
        self.sigmas = [float(s) for s in sigmas]
        self.steps = max(len(self.sigmas) - 1, 1)
        self.schedule = schedule
        self.keep = keep
        stages = len(schedule.dilation)
        dilated = [dilate(1.0 - keep, radius) for radius in schedule.dilation] or [1.0 - keep]
        self._transitions: list[torch.Tensor | None] = [
            transition_at(
                keep, i, self.steps, schedule, dilated[dilation_stage(i, self.steps, stages) if stages else 0]
            )
            for i in range(self.steps)
        ]
        self.final_keep = final_keep(keep, self.steps, schedule)

    def step_of(self, sigma: torch.Tensor | float) -> int:
        value = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        return step_index(value, self.sigmas)

    def transition(self, sigma: torch.Tensor | float) -> torch.Tensor | None:
        return self._transitions[self.step_of(sigma)]


# --------------------------------------------------------------------------------------------------------
# Noise and the per-step fusion
# --------------------------------------------------------------------------------------------------------

_UINT64 = 2**64
_GOLDEN = 0x9E3779B97F4A7C15


def step_seed(seed: int, step: int) -> int:
    """A 64-bit seed for the fresh noise of ``step``, decorrelated from the run seed and from seed + k."""
    return (seed ^ (_GOLDEN * (step + 1))) % _UINT64


def step_noise(seed: int, step: int, shape: Sequence[int], batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """Fresh ε ~ N(0, I) for one step, drawn on the CPU (reproducible across devices).

    With ``batch_index`` each latent draws the noise of its index in a full batch, as ComfyUI does for the
    initial noise, so a latent taken out of a batch gets the same noise as inside it.
    """
    generator = torch.Generator().manual_seed(step_seed(seed, step))
    if batch_index is None:
        return torch.randn(tuple(shape), generator=generator)
    item_shape = (1, *shape[1:])
    draws = [torch.randn(item_shape, generator=generator) for _ in range(max(batch_index) + 1)]
    return torch.cat([draws[i] for i in batch_index])


def mix_input(x: torch.Tensor, transition: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Paste the re-noised sources into the sample: ``t ⊙ x + (1 − t) ⊙ known`` (ComfyUI's operand order)."""
    return x * transition + known * (1.0 - transition)


def mix_output(denoised: torch.Tensor, transition: torch.Tensor, composite: torch.Tensor) -> torch.Tensor:
    """Known regions of a prediction are the clean sources: ``t ⊙ x̂0 + (1 − t) ⊙ c``."""
    return denoised * transition + composite * (1.0 - transition)


def fuse_final(samples: torch.Tensor, composite: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Final fusion with the clean sources (the paper's figure); exactly the sources where keep = 1."""
    blended = samples * (1.0 - keep) + composite * keep
    return torch.where(keep >= 1.0, composite, blended)


class SemanticMixDenoiser:
    """Wraps any k-diffusion denoiser with per-step semantic mixing (method.md §9.3, σ-space).

    ``noise_for(step, x)`` returns the ε used to re-noise the sources at that step: the run's initial noise
    for shared noise, a fresh draw for the paper's per-step sampling.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        plan: MixPlan,
        composite: torch.Tensor,
        noise_for: Callable[[int, torch.Tensor], torch.Tensor],
        noise_scaling: NoiseScaling = eps_noise_scaling,
    ):
        self.denoiser = denoiser
        self.plan = plan
        self.composite = composite
        self.noise_for = noise_for
        self.noise_scaling = noise_scaling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        transition = self.plan.transition(sigma)
        if transition is None:
            return self.denoiser(x, sigma, **extra_args)
        known = self.noise_scaling(sigma, self.noise_for(self.plan.step_of(sigma), x), self.composite)
        denoised = self.denoiser(mix_input(x, transition, known), sigma, **extra_args)
        return mix_output(denoised, transition, self.composite)


def ddim_timesteps(steps: int, total: int = 1000) -> list[int]:
    """LDM's uniform DDIM timesteps ``range(0, T, T // S) + 1`` (method.md §9.2), ascending."""
    c = total // steps
    return [t + 1 for t in range(0, total, c)]
