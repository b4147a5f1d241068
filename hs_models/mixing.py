"""Semantic mixing (progressive fusion) of source latents during diffusion sampling, docs/method.md §9.

Everything here works in k-diffusion's σ-parameterisation, where a noisy latent is ``x_σ = z + σ·ε`` and a
denoiser maps ``(x, σ) → x̂0``; for ε-prediction models this is exactly the paper's ᾱ-space fusion
(comfyui.md §6). Mask convention (shared with the layout nodes): a *keep* mask is 1 where a source is
kept, and the *transition* mask ``t = 1 − keep`` is 1 where the model generates.

Per step, at noise level σ (docs/method.md §9.3, [INFER] formalisation of the paper's figure)::

    x   ← t ⊙ x + (1 − t) ⊙ (c + σ·ε)       # sources re-noised to the current level, pasted in
                                          # (flow models: σ·ε + (1 − σ)·c, ComfyUI's noise scaling)
    x̂0 ← t ⊙ D(x, σ) + (1 − t) ⊙ c         # known regions of every prediction are the clean sources
    final: z ← t_final ⊙ z + (1 − t_final) ⊙ c

where ``c`` is the composite of the sources. ε is one draw shared by every source (docs/method.md §9.4), either
the sampler's initial noise for the whole run ("shared": exactly ComfyUI's ``noise_mask`` inpainting) or a
new draw per step ("fresh": the paper's q-sample at every step).

Schedules [PROPOSAL] (docs/method.md §9.3 knobs): the *fusion window* limits fusion to a fraction of the
trajectory; the *dilation schedule* grows the transition region early in the trajectory and shrinks it
stage by stage (BLD's progressive masks, docs/method.md §9.2); *soft masks by noise level* read a keep value v
as "keep this pixel for the first v of the trajectory, then regenerate it", so calibration bands
harmonise late. Masks and fresh noise belong to the sampler's *step*, not to each evaluation:
multi-evaluation samplers (Heun, DPM-2, DPM++ SDE, …) call the denoiser several times per step, and every
call of one step sees one mask and one noise (:class:`StepClock`).

:func:`mix_step` is the one implementation of a mixed evaluation; the ComfyUI guider calls it with the
model's own noise scaling and latent space.
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

NoiseScaling = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``noise_scaling(sigma, noise, clean) -> noisy``: how a clean latent is noised to level σ."""


@dataclass(frozen=True)
class MixOptions:
    """Every option of the semantic-mixing sampler, one frozen value from the nodes to the guider and the tests.

    noise_mode                "shared": the sources are re-noised with the run's initial noise at every step
                              (ComfyUI's noise-mask inpainting, bit for bit); "fresh": a new draw per step, one
                              draw shared by every source (the paper's q-sample, docs/method.md §9.1, §9.4)
    fusion_start, fusion_end  fraction of the steps (0 = first step, 1 = after the last) during which the
                              sources are fused in; outside the window the model generates everywhere
    dilation                  BLD-style schedule of transition-region dilation radii in latent cells, most
                              dilated first; the trajectory is cut into len(dilation) near-equal stages
    soft_masks                "blend": a keep value v mixes source and generation by v at every step
                              (ComfyUI's inpainting); "by noise level": v is the fraction of the trajectory
                              during which the pixel is kept (pixels with v = 1 are always kept)
    final_fusion              put the clean sources back after the last step (the paper's figure)

    The schedules are [PROPOSAL] knobs of docs/method.md §9.3.
    """

    noise_mode: str = "shared"
    fusion_start: float = 0.0
    fusion_end: float = 1.0
    dilation: tuple[int, ...] = ()
    soft_masks: str = "blend"
    final_fusion: bool = True

    def __post_init__(self) -> None:
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if not (0.0 <= self.fusion_start < self.fusion_end <= 1.0):
            raise ValueError(
                f"fusion window start {self.fusion_start} / end {self.fusion_end} must satisfy "
                f"0 ≤ start < end ≤ 1 (fractions of the sampling schedule; 0 = first step, 1 = the end)"
            )
        if any(r < 0 for r in self.dilation):
            raise ValueError(f"mask dilation radii must be ≥ 0 latent cells, got {list(self.dilation)}")
        if self.soft_masks not in SOFT_MASK_MODES:
            raise ValueError(f"soft_masks must be one of {SOFT_MASK_MODES}, got {self.soft_masks!r}")

    @classmethod
    def from_widgets(
        cls,
        noise_mode: str = "shared",
        fusion_start: float = 0.0,
        fusion_end: float = 1.0,
        mask_dilation: str = "",
        soft_masks: str = "blend",
        final_fusion: bool = True,
    ) -> MixOptions:
        """The options as the nodes' widgets give them (the dilation schedule as text, e.g. ``"3, 2, 1, 0"``)."""
        return cls(
            noise_mode, fusion_start, fusion_end, parse_dilation_schedule(mask_dilation), soft_masks, final_fusion
        )

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
    is kept [PROPOSAL, docs/method.md §7 step 4]. ``H/h`` and ``W/w`` must be the same whole factor.
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
    (docs/method.md §9.4: K-source fusion is single-composite inpainting).
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

    BLD's rule (docs/method.md §9.2: intervals of ⌊S / n⌋ + 1 steps) can leave the last masks unused, e.g. 6 steps
    with 4 masks never reach the fourth; with equal stages every mask runs once S ≥ n and the last step
    always uses the last mask, the one the final fusion keeps [PROPOSAL].
    """
    return min(step * stages // steps, stages - 1)


def fusion_active(step: int, steps: int, options: MixOptions) -> bool:
    """Whether step ``step`` of ``steps`` lies in the fusion window (positions i / steps, 0 = first step)."""
    position = step / steps
    return options.fusion_start - 1e-9 <= position < options.fusion_end - 1e-9


def transition_at(
    keep: torch.Tensor, step: int, steps: int, options: MixOptions, dilated: torch.Tensor | None = None
) -> torch.Tensor | None:
    """(B,1,h,w) transition mask (1 = generate) used at ``step``; None when no fusion happens at that step.

    ``dilated`` may hold this step's stage of ``1 − keep`` already dilated. Thresholding by noise level comes
    after the (grey) dilation: a max filter commutes with thresholds, so one dilation serves a whole stage.
    """
    if not fusion_active(step, steps, options):
        return None
    transition = dilated
    if transition is None:
        transition = 1.0 - keep
        if options.dilation:
            transition = dilate(transition, options.dilation[dilation_stage(step, steps, len(options.dilation))])
    if options.soft_masks == "by noise level":
        # keep value v is kept while the position i / steps is below v, i.e. generated once 1 − v ≥ 1 − i / steps
        transition = (transition >= 1.0 - step / steps).to(keep.dtype)
    return transition


def final_keep(keep: torch.Tensor, steps: int, options: MixOptions) -> torch.Tensor:
    """Keep mask of the final fusion: the mask of the trajectory's last step (its dilation stage), so the
    clean sources come back exactly where the last step kept them and never over a generated ring."""
    if options.soft_masks == "by noise level":
        keep = (keep >= 1.0).to(keep.dtype)
    if options.dilation:
        stage = dilation_stage(steps - 1, steps, len(options.dilation))
        keep = 1.0 - dilate(1.0 - keep, options.dilation[stage])
    return keep


class MixPlan:
    """Transition masks for every step of one sampling run, precomputed.

    keep: (B,1,h,w) keep mask on the sampling device; sigmas: the run's schedule (steps + 1 values).
    """

    def __init__(self, keep: torch.Tensor, sigmas: Sequence[float] | torch.Tensor, options: MixOptions):
        self.sigmas = [float(s) for s in sigmas]
        self.steps = max(len(self.sigmas) - 1, 1)
        self.options = options
        self.keep = keep
        stages = len(options.dilation)
        dilated = [dilate(1.0 - keep, radius) for radius in options.dilation] or [1.0 - keep]
        self._transitions: list[torch.Tensor | None] = [
            transition_at(keep, i, self.steps, options, dilated[dilation_stage(i, self.steps, stages) if stages else 0])
            for i in range(self.steps)
        ]
        self.final_keep = final_keep(keep, self.steps, options)

    def transition(self, step: int) -> torch.Tensor | None:
        """The transition mask (1 = generate) of ``step``; None where that step fuses nothing."""
        return self._transitions[min(max(step, 0), self.steps - 1)]


class StepClock:
    """Which step of the sampler a model evaluation belongs to, so that every evaluation of one step sees that
    step's mask and noise (docs/method.md §9.6).

    A noise level σ in ``(σ_{i+1}, σ_i]`` belongs to step i: right for one-evaluation and multistep samplers
    and for the midpoint evaluations of DPM-2, DPM++ 2S/SDE and SEEDS. Heun-type correctors evaluate *at*
    ``σ_{i+1}`` (and Heun++ also at ``σ_{i+2}``) after step i's callback, before step i+1 starts at the same σ;
    with ``corrector_at_next_sigma`` the first evaluation at ``σ_{i+1}`` after step i's callback, and any
    below it, still belong to step i. Samplers call back once per step, after the step's first evaluation.
    """

    def __init__(self, sigmas: Sequence[float] | torch.Tensor, corrector_at_next_sigma: bool = False):
        self.sigmas = [float(s) for s in sigmas]
        self.corrector_at_next_sigma = corrector_at_next_sigma
        self._open: int | None = None  # step whose callback has fired and whose corrector may still follow
        self._corrector_seen = False

    def step_done(self, step: int) -> None:
        """The sampler's callback for ``step`` (after that step's first evaluation)."""
        self._open = step
        self._corrector_seen = False

    def step_of(self, sigma: torch.Tensor | float) -> int:
        value = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        step = step_index(value, self.sigmas)
        current = self._open
        if not self.corrector_at_next_sigma or current is None or step <= current:
            return step
        if step == current + 1 and not self._corrector_seen:
            self._corrector_seen = True  # Heun's corrector at σ_{i+1}
            return current
        if step > current + 1:
            return current  # Heun++'s second corrector at σ_{i+2}
        self._open = None  # the second evaluation at σ_{i+1}: step i+1 begins
        return step


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


def band_noise(noise: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """ε for re-noising the sources, scaled so that a grey transition value keeps the band at the noise level σ.

    Mixing ``t ⊙ x + (1 − t) ⊙ (c + σ·g·ε)`` with x carrying its own independent noise of level σ gives noise
    of variance ``σ²·(t² + (1 − t)²·g²)``; ``g = √((1 + t) / (1 − t))`` makes it σ² for every t in [0, 1)
    [PROPOSAL, docs/method.md §9.4: without it a value of 0.5 leaves 0.71 σ]. Binary masks get g = 1
    exactly, so they are unchanged; where t = 1 the source is not used.
    """
    gain = torch.where(transition < 1.0, ((1.0 + transition) / (1.0 - transition).clamp_min(1e-6)).sqrt(), 1.0)
    return noise * gain


def mix_step(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    transition: torch.Tensor,
    composite: torch.Tensor,
    noise: torch.Tensor,
    noise_scaling: NoiseScaling,
) -> torch.Tensor:
    """One model evaluation with semantic mixing, in ComfyUI's σ-space (docs/method.md §9.3)::

        known = noise_scaling(σ, g ⊙ ε, c)          # the sources re-noised to σ (band_noise: g)
        x̂0   = t ⊙ D(t ⊙ x + (1 − t) ⊙ known) + (1 − t) ⊙ c

    ``denoise`` maps the mixed sample to x̂0 at σ (a k-diffusion denoiser bound to σ); ``noise_scaling`` is the
    model family's forward noising (ComfyUI's ``scale_latent_inpaint``: ``c + σ·ε`` for ε- and v-prediction,
    ``σ·ε + (1 − σ)·c`` for flow models). For ε-prediction this is the paper's ᾱ-space step, divided by √ᾱ.
    ``composite`` and ``noise`` are in the model's latent space, ``transition`` (B,1,h,w) is 1 where the model
    generates.
    """
    known = noise_scaling(sigma, band_noise(noise, transition), composite)
    return mix_output(denoise(mix_input(x, transition, known)), transition, composite)


def ddim_timesteps(steps: int, total: int = 1000) -> list[int]:
    """LDM's uniform DDIM timesteps ``range(0, T, T // S) + 1`` (docs/method.md §9.2), ascending."""
    c = total // steps
    return [t + 1 for t in range(0, total, c)]
