"""``autoencoder``: train a VQ first stage (the LDM's ℰ/𝒟) on the images of a dataset folder.

The paper's LDM uses a pretrained VQ-f4 (CompVis ``vq-f4``, trained with a perceptual and an adversarial
loss on OpenImages; method.md §8.6) and keeps it frozen: use that for real models. This task trains the same
module (:class:`hs_models.ldm.vq.VQAutoencoder`) with the plain VQ-VAE objective (L1 reconstruction,
codebook and commitment terms with a straight-through estimator, β = 0.25 as taming's VectorQuantizer2)
for small experiments, procedural data and tests, where no pretrained first stage of the right size exists.
Its export is an LDM-keyed file (``first_stage_model.*``) that ``ldm --first-stage`` reads.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hs_models.ldm.config import FIRST_STAGE_PREFIX
from hs_models.ldm.vq import VQAutoencoder

from .data import PairedFolder, SeededDataset
from .ldm import VQ_METADATA_CONFIG, _vq_weights_from, load_into, load_model_config
from .logs import image_grid
from .task import Task


@dataclass
class AutoencoderOptions:
    model: str = "semantic_synthesis256"  # LDM config (built-in name or file) whose first_stage is trained
    init: str = ""  # start from these VQ weights (an LDM checkpoint, vq-f4 model.ckpt or an earlier export)
    resolution: int = 256
    flip: bool = True
    commitment: float = 0.25  # β of the commitment term
    sample_count: int = 4


class VQTrainingModule(nn.Module):
    def __init__(self, first_stage: dict[str, Any], commitment: float):
        super().__init__()
        self.vq = VQAutoencoder(**first_stage)
        self.commitment = commitment
        with torch.no_grad():  # codes spread over the latent's range, so most are used from the start
            self.vq.quantize.embedding.weight.uniform_(-1.0, 1.0)

    def reconstruct(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image * 2.0 - 1.0
        h = self.vq.encode(x)
        quantizer = self.vq.quantize
        codes = quantizer.lookup(quantizer.indices(h.detach()), h.dtype)
        z_q = h + (codes - h).detach()  # straight-through estimator
        return self.vq.decoder(self.vq.post_quant_conv(z_q)), h, codes

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch["image"] * 2.0 - 1.0
        reconstruction, h, codes = self.reconstruct(batch["image"])
        rec = (reconstruction.float() - x).abs().mean()
        codebook = F.mse_loss(codes.float(), h.detach().float()) + self.commitment * F.mse_loss(
            h.float(), codes.detach().float()
        )
        return rec + codebook, {"loss_rec": rec.detach(), "loss_codebook": codebook.detach()}


class AutoencoderTask(Task):
    name = "autoencoder"
    description = "Train a VQ first stage (plain VQ-VAE loss) for small experiments; real models use CompVis vq-f4."
    Options = AutoencoderOptions
    defaults = {"lr": 2e-4, "batch_size": 8, "steps": 20_000}
    export_name = "first_stage.safetensors"

    def __init__(self, options, train, context, run_dir):
        super().__init__(options, train, context, run_dir)
        self.config = load_model_config(options.model, 1)
        self._preview: torch.Tensor | None = None

    def architecture(self) -> dict[str, Any]:
        return {"first_stage": self.config.first_stage}

    def build_model(self) -> nn.Module:
        model = VQTrainingModule(self.config.first_stage, self.options.commitment)
        if self.options.init:
            path = Path(self.options.init)
            load_into(model.vq, _vq_weights_from(path), "VQ autoencoder", path)
        return model

    def build_dataset(self) -> torch.utils.data.Dataset:
        base = PairedFolder(self.train.data, self.options.resolution)
        flip = self.options.flip

        def transform(sample: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
            image = sample["image"]
            if flip and float(torch.rand((), generator=generator)) < 0.5:
                image = image.flip(-1)
            return {"image": image}

        return SeededDataset(base, transform, self.train.seed)

    def sample_grid(self, model: nn.Module, ema_model: nn.Module | None, step: int) -> torch.Tensor:
        if self._preview is None:
            base = PairedFolder(self.train.data, self.options.resolution)
            self._preview = torch.stack([base[i]["image"] for i in range(min(self.options.sample_count, len(base)))])
        model = ema_model or model
        images = self._preview.to(next(model.parameters()).device)
        reconstruction = model.vq.decode(model.vq.encode(images * 2 - 1))  # the path the LDM uses: quantised
        return image_grid([images.cpu(), ((reconstruction.float().cpu() + 1) / 2).clamp(0, 1)])

    def export(self, model: nn.Module, ema_model: nn.Module | None, path: Path) -> None:
        import json

        from safetensors.torch import save_file

        module = (ema_model or model).vq
        tensors = {
            FIRST_STAGE_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={VQ_METADATA_CONFIG: json.dumps(self.config.first_stage)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
