"""``ldm``: train the semantic-mixing LDM (method.md §8) with the pack's own modules.

The UNet ε_θ, the VQ-f4 first stage and the layout encoder τ_θ are the classes inference runs
(:mod:`hs_models.ldm`), so the exported ``.safetensors`` (LDM key layout, architecture in its metadata,
live and EMA UNet weights) loads in Load Semantic-Mixing LDM as it is.

Training as LDM's semantic-synthesis model (method.md §8.2–§8.3): z = ℰ(x) (pre-quantisation latent, frozen
first stage), t uniform in 0..T−1, z_t = √ᾱ_t z + √(1−ᾱ_t) ε with LDM's linear-in-√β schedule, the UNet sees
z_t ⊕ τ_θ(L) and predicts ε; loss L1; AdamW over the UNet and τ_θ (trainable); EMA of the UNet weights.

Conditioning layouts [PROPOSAL, method.md §7]: with probability ``cover_prob`` the layout is "covered": the
head silhouette (hair, face, hat) of another layout of the dataset, scaled 0.8–1.2 and shifted by up to ±5%,
becomes UNKNOWN wherever it lies outside the layout's own head, as v1's head-cover augmentation; τ_θ encodes
UNKNOWN as no class (an all-zero one-hot vector, as Layout Conditioning's "no class"), so the model learns to
render plausible content under holes and imperfect layouts. With probability ``layout_dropout`` the whole
layout becomes UNKNOWN: the model also learns an unconditional ε, which classifier-free guidance needs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hs_models.labels import CANONICAL, UNKNOWN, convert_labels, get_label_set
from hs_models.layout import colorize
from hs_models.ldm import METADATA_CONFIG, METADATA_WEIGHTS, CheckpointError, read_ldm_checkpoint
from hs_models.ldm.checkpoint import load_state_dict, read_metadata
from hs_models.ldm.config import (
    FIRST_STAGE_PREFIX,
    LAYOUT_ENCODER_PREFIX,
    UNET_PREFIX,
    LDMConfig,
    builtin_config,
    linear_betas,
    read_config_file,
)
from hs_models.ldm.convert import EMA_STATE_KEYS, ema_key, reinitialise_layout_encoder
from hs_models.ldm.rescaler import SpatialRescaler
from hs_models.ldm.unet import UNetModel
from hs_models.ldm.vq import VQAutoencoder
from hs_models.log import logger

from .config import ConfigError
from .data import PairedFolder, SeededDataset
from .logs import image_grid
from .task import Task

HEAD_CLASSES = ("hair", "face", "hat")
VQ_METADATA_CONFIG = "hs_vq_config"


@dataclass
class LDMOptions:
    model: str = "semantic_synthesis256"  # built-in LDM config name, or a .json/.yaml config file
    init: str = ""  # start from this LDM checkpoint (CompVis semantic synthesis .ckpt, or a pack .safetensors)
    init_weights: str = "auto"  # UNet weights of `init`: auto (EMA when present), ema or live
    first_stage: str = ""  # take the (frozen) VQ autoencoder from this file instead (LDM checkpoint, vq-f4 .ckpt, or
    #                        the autoencoder subcommand's export)
    label_set: str = "paper5"  # the model's layout classes (dataset layouts are canonical8 and converted)
    resolution: int = 256  # image side for training (a multiple of the latent factor × UNet factor)
    flip: bool = True  # random horizontal flips
    cover_prob: float = 0.5  # probability of head-cover conditioning (method.md §7)
    layout_dropout: float = 0.0  # probability of an all-UNKNOWN layout (enables classifier-free guidance later)
    preview_data: str = ""  # dataset folder for the sample grids (default: the first pairs of --data)
    sample_count: int = 4  # layouts in each sample grid
    sample_steps: int = 50  # DDIM steps (η = 0) for the sample grids


def load_model_config(name: str, label_set_size: int) -> LDMConfig:
    path = Path(name)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        config = read_config_file(path)
    else:
        try:
            config = builtin_config(name)
        except ValueError as e:
            raise ConfigError(f"model: {e} (or give a .json/.yaml config file)") from e
    return config.with_num_classes(label_set_size)


def _vq_weights_from(path: Path) -> dict[str, torch.Tensor]:
    """The VQ autoencoder weights of a file: under ``first_stage_model.`` (LDM checkpoints, the autoencoder
    subcommand's export) or bare (CompVis vq-f4 ``model.ckpt``); training-only ``loss.*`` entries dropped."""
    state = load_state_dict(path)
    prefixed = {k[len(FIRST_STAGE_PREFIX) :]: v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)}
    weights = prefixed or state
    weights = {k: v for k, v in weights.items() if not k.startswith("loss.")}
    if "quantize.embedding.weight" not in weights:
        raise CheckpointError(
            f"{path.name!r} holds no VQ autoencoder (no quantize.embedding.weight, with or without the "
            f"first_stage_model. prefix); give an LDM checkpoint, CompVis vq-f4 model.ckpt or a file from the "
            f"autoencoder subcommand"
        )
    return weights


def load_into(module: nn.Module, weights: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in weights]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [
        f"{k} {list(weights[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if problems:
        raise ConfigError(
            f"the {what} of {path.name!r} does not fit the configured architecture ({'; '.join(problems[:6])}"
            f"{'; …' if len(problems) > 6 else ''}); choose the --model config it was trained with"
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})


class LDMTrainingModule(nn.Module):
    """UNet + τ_θ (trained) + VQ first stage (frozen); ``forward(batch)`` is the training loss."""

    def __init__(self, config: LDMConfig):
        super().__init__()
        self.config = config
        self.unet = UNetModel(**config.unet)
        self.layout_encoder = SpatialRescaler(**config.layout_encoder)
        self.first_stage = VQAutoencoder(**config.first_stage)
        self.first_stage.requires_grad_(False)
        diffusion = config.diffusion
        alphas_cumprod = torch.cumprod(
            1.0 - linear_betas(diffusion["linear_start"], diffusion["linear_end"], diffusion["timesteps"]), 0
        )
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.scale_factor = float(diffusion["scale_factor"])

    def train(self, mode: bool = True):
        super().train(mode)
        self.first_stage.eval()  # frozen: no dropout, whatever the mode
        return self

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in 0..1 → scaled pre-quantisation latent (LDM's encode_first_stage)."""
        with torch.no_grad():
            return self.first_stage.encode(image * 2.0 - 1.0).float() * self.scale_factor

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        return self.layout_encoder.encode_labels(labels, unknown=UNKNOWN)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.encode(batch["image"])
        noise, t = batch["noise"].to(z.dtype), batch["t"]
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z + (1.0 - a).sqrt() * noise
        code = self.condition(batch["labels"]).to(z_t.dtype)
        eps = self.unet(torch.cat([z_t, code], dim=1), t)
        loss = (eps.float() - noise).abs().mean()  # LDM loss_type l1, ε-prediction
        return loss, {}


@torch.no_grad()
def ddim_sample(
    unet: nn.Module, code: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from pure noise with LDM's uniform timesteps ``range(0, T, T//S) + 1``."""
    total = alphas_cumprod.numel()
    timesteps = list(range(0, total, max(1, total // steps)))
    timesteps = [t + 1 for t in timesteps if t + 1 < total]
    b, _, h, w = code.shape
    channels = unet.out_channels
    x = torch.randn(b, channels, h, w, generator=generator).to(code.device, code.dtype)
    ac = alphas_cumprod.to(code.device, torch.float32)
    for i in reversed(range(len(timesteps))):
        t = timesteps[i]
        a_t = ac[t]
        a_prev = ac[timesteps[i - 1]] if i > 0 else ac[0]
        eps = unet(torch.cat([x, code], dim=1), torch.full((b,), t, device=code.device, dtype=torch.long)).float()
        x0 = (x.float() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).to(code.dtype)
    return x


def head_cover(
    labels: torch.Tensor, donor: torch.Tensor, head_ids: list[int], generator: torch.Generator
) -> torch.Tensor:
    """``labels`` with ``donor``'s head silhouette (scaled 0.8–1.2, shifted ±5%) as UNKNOWN outside its own head."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    silhouette = torch.isin(donor, torch.tensor(head_ids)).float()
    scale = uniform(0.8, 1.2)
    shift = (uniform(-0.1, 0.1), uniform(-0.1, 0.1))  # grid units: ±0.1 of the [-1, 1] range = ±5% of the side
    theta = torch.tensor([[1.0 / scale, 0.0, shift[0]], [0.0, 1.0 / scale, shift[1]]])
    grid = F.affine_grid(theta[None], [1, 1, *labels.shape], align_corners=False)
    covered = F.grid_sample(silhouette[None, None], grid, mode="nearest", align_corners=False)[0, 0] > 0.5
    own_head = torch.isin(labels, torch.tensor(head_ids))
    return labels.masked_fill(covered & ~own_head, UNKNOWN)


class LDMTask(Task):
    name = "ldm"
    description = (
        "Train the semantic-mixing LDM (UNet ε_θ + layout encoder τ_θ; frozen VQ-f4 first stage) on image + layout "
        "pairs; the export loads in Load Semantic-Mixing LDM."
    )
    Options = LDMOptions
    # LDM semantic synthesis: base_lr 1e-6 × batch (scale_lr) and EMA 0.9999 (method.md §8.3)
    defaults = {"lr": 1e-6 * 8, "ema_decay": 0.9999, "batch_size": 8, "steps": 200_000, "sample_every": 5000,
                "checkpoint_every": 5000}  # fmt: skip
    export_name = "hs_ldm.safetensors"

    def __init__(self, options: LDMOptions, train, context, run_dir):
        super().__init__(options, train, context, run_dir)
        self.label_set = get_label_set(options.label_set)
        self.config = load_model_config(options.model, self.label_set.num_classes)
        multiple = self.config.vae_factor * self.config.unet_factor
        if options.resolution % multiple:
            raise ConfigError(f"resolution {options.resolution} must be a multiple of {multiple} for this model")
        for name in ("cover_prob", "layout_dropout"):
            value = getattr(options, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if not (options.init or options.first_stage):
            raise ConfigError(
                "the VQ first stage is frozen, so it must come trained: give --init (a CompVis semantic-synthesis "
                "checkpoint or a pack .safetensors) or --first-stage (CompVis vq-f4 model.ckpt, or a file from the "
                "autoencoder subcommand)"
            )
        self._preview: dict[str, torch.Tensor] | None = None

    def architecture(self) -> dict[str, Any]:
        return {"ldm_config": self.config.to_dict(), "label_set": self.label_set.name}

    # --- model --------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = LDMTrainingModule(self.config)
        options = self.options
        if options.init:
            self._load_init(model, Path(options.init))
        if options.first_stage:
            path = Path(options.first_stage)
            load_into(model.first_stage, _vq_weights_from(path), "VQ autoencoder", path)
        return model

    def _load_init(self, model: LDMTrainingModule, path: Path) -> None:
        checkpoint = read_ldm_checkpoint(path, self.options.init_weights)
        load_into(model.unet, checkpoint.unet, "UNet", path)
        load_into(model.first_stage, checkpoint.first_stage, "VQ autoencoder", path)
        if checkpoint.config.num_classes == self.label_set.num_classes and checkpoint.layout_encoder:
            load_into(model.layout_encoder, checkpoint.layout_encoder, "layout encoder", path)
            logger.info("%s: UNet, VQ and layout encoder loaded", path.name)
        else:  # e.g. CompVis semantic synthesis: 182 COCO-Stuff classes (method.md §8.6)
            _, weights = reinitialise_layout_encoder(checkpoint.config, self.label_set.num_classes, self.train.seed)
            load_into(model.layout_encoder, weights, "layout encoder", path)
            logger.info(
                "%s: UNet and VQ loaded; layout encoder re-initialised for %d %s classes (the file has %d)",
                path.name, self.label_set.num_classes, self.label_set.name, checkpoint.config.num_classes,
            )  # fmt: skip

    def ema_module(self, model: nn.Module) -> nn.Module:
        return model.unet  # LitEma covers the diffusion model only (method.md §8.3)

    # --- data ---------------------------------------------------------------------------------------
    def _transform(self, base: PairedFolder):
        options, config = self.options, self.config
        head_ids = [CANONICAL.index(n) for n in HEAD_CLASSES]
        latent = options.resolution // config.vae_factor
        channels, timesteps = config.latent_channels, config.diffusion["timesteps"]

        def transform(sample: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
            image, labels = sample["image"], sample["labels"]
            if options.flip and float(torch.rand((), generator=generator)) < 0.5:
                image, labels = image.flip(-1), labels.flip(-1)
            cover, drop = (float(v) for v in torch.rand(2, generator=generator))
            donor = int(torch.randint(len(base), (), generator=generator))
            if cover < options.cover_prob and len(base) > 1:
                labels = head_cover(labels, base.layout(donor), head_ids, generator)
            if drop < options.layout_dropout:
                labels = torch.full_like(labels, UNKNOWN)
            labels = convert_labels(labels[None], CANONICAL, self.label_set)[0]
            return {
                "image": image,
                "labels": labels,
                "t": torch.randint(timesteps, (), generator=generator),
                "noise": torch.randn(channels, latent, latent, generator=generator),
            }

        return transform

    def build_dataset(self) -> torch.utils.data.Dataset:
        base = PairedFolder(self.train.data, self.options.resolution)
        if base.label_set is not CANONICAL:
            raise ConfigError(f"{self.train.data}: layouts must be canonical8 for training, got {base.label_set.name}")
        return SeededDataset(base, self._transform(base), self.train.seed)

    # --- samples and export -------------------------------------------------------------------------
    def _preview_batch(self) -> dict[str, torch.Tensor]:
        if self._preview is None:
            base = PairedFolder(self.options.preview_data or self.train.data, self.options.resolution)
            samples = [base[i] for i in range(min(self.options.sample_count, len(base)))]
            labels = torch.stack([s["labels"] for s in samples])
            self._preview = {
                "image": torch.stack([s["image"] for s in samples]),
                "labels": convert_labels(labels, CANONICAL, self.label_set),
            }
        return self._preview

    @torch.no_grad()
    def sample_images(
        self, model: LDMTrainingModule, unet: nn.Module, labels: torch.Tensor, steps: int, seed: int = 0
    ) -> torch.Tensor:
        """DDIM samples (B,3,H,W) in 0..1 for (B,H,W) layouts in the model's label set."""
        device = next(model.parameters()).device
        code = model.condition(labels.to(device))
        generator = torch.Generator().manual_seed(seed)
        z = ddim_sample(unet, code, model.alphas_cumprod, steps, generator)
        return ((model.first_stage.decode(z.float() / model.scale_factor).float() + 1.0) / 2.0).clamp(0, 1)

    def sample_grid(self, model: nn.Module, ema_model: nn.Module | None, step: int) -> torch.Tensor:
        preview = self._preview_batch()
        unet = ema_model if ema_model is not None else model.unet
        samples = self.sample_images(model, unet, preview["labels"], self.options.sample_steps)
        layouts = colorize(preview["labels"], self.label_set).permute(0, 3, 1, 2)
        return image_grid([layouts, samples.cpu(), preview["image"]])

    def export(self, model: nn.Module, ema_model: nn.Module | None, path: Path) -> None:
        write_ldm_file(model, ema_model, self.config, self.label_set.name, path)


def write_ldm_file(
    model: LDMTrainingModule, ema_unet: nn.Module | None, config: LDMConfig, label_set: str, path: Path
) -> None:
    """The LDM-layout ``.safetensors`` that Load Semantic-Mixing LDM reads (written atomically)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in ((UNET_PREFIX, model.unet), (FIRST_STAGE_PREFIX, model.first_stage),
                           (LAYOUT_ENCODER_PREFIX, model.layout_encoder)):  # fmt: skip
        for key, value in module.state_dict().items():
            tensors[prefix + key] = value.detach().float().cpu().contiguous()
    if ema_unet is not None:
        for key, value in ema_unet.state_dict().items():
            tensors[ema_key(key)] = value.detach().float().cpu().contiguous()
        tensors[EMA_STATE_KEYS[0]] = torch.tensor(0.0)  # LitEma bookkeeping; the loader needs only the weights
        tensors[EMA_STATE_KEYS[1]] = torch.tensor(0, dtype=torch.int32)
    metadata = {
        METADATA_CONFIG: config.to_json(),
        METADATA_WEIGHTS: "live",  # the model.diffusion_model.* weights; the model_ema.* copy is the EMA
        "hs_ldm_label_set": label_set,
        "hs_ldm_source": "python -m hs_training ldm",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_vq_config(path: Path) -> dict[str, Any] | None:
    text = read_metadata(path).get(VQ_METADATA_CONFIG)
    return json.loads(text) if text else None


def per_class_mean_colours(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,3,H,W), (B,H,W) → (num_classes, 3) mean colour per class over the batch (NaN where absent)."""
    out = torch.full((num_classes, 3), math.nan)
    for c in range(num_classes):
        where = labels == c
        if where.any():
            out[c] = images.permute(0, 2, 3, 1)[where].mean(0)
    return out
