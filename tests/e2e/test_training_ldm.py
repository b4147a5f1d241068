"""Training the semantic-mixing LDM end to end, on the CPU: procedural data → trained model → real ComfyUI server.

Real: the ``autoencoder`` and ``ldm`` subcommands (hs_training), the pack's LDM modules, the exported file,
its loading by read_ldm_checkpoint (the loader's reader) and by Load Semantic-Mixing LDM on the real server, and
the headswap_hs_ldm template (with the hand-drawn layouts of test_server_pipeline.py, as there).

Data: 16² renderings of procedural half-body layouts (hs_models.synthetic) with one colour and stripe texture per
class (hs_training.data.render_layout); a held-out set from other seeds. The model is the smallest the
modules build (VQ f = 2, a 0.7 M-parameter UNet): a few hundred steps are enough to learn each class's colour.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from hs_models.labels import CANONICAL, PAPER5, convert_labels
from hs_models.ldm import read_ldm_checkpoint
from hs_models.ldm.rescaler import SpatialRescaler
from hs_models.ldm.unet import UNetModel
from hs_models.ldm.vq import VQAutoencoder
from hs_testing.training import RESOLUTION, torch_threads, write_tiny_config
from hs_training.cli import train
from hs_training.data import PairedFolder, write_procedural_dataset
from hs_training.ldm import LDMTrainingModule, ddim_sample, per_class_mean_colours


def _pipeline_module():
    """tests/e2e/test_server_pipeline.py (its template-running helpers and photo fixture; tests use importlib mode)."""
    spec = importlib.util.spec_from_file_location(
        "hs_e2e_pipeline", Path(__file__).with_name("test_server_pipeline.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pipeline = _pipeline_module()
photos = pipeline.photos  # the template's input photos and drawn layouts (a module fixture)

HELD_OUT = 8
DDIM_STEPS = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_ldm")
    data = write_procedural_dataset(root / "data", count=64, size=RESOLUTION, seed=0)
    held_out = write_procedural_dataset(root / "held_out", count=HELD_OUT, size=RESOLUTION, seed=7)
    config = write_tiny_config(root)
    common = {"data": str(data), "model": str(config), "resolution": RESOLUTION, "batch_size": 8, "progress": False,
              "device": "cpu", "log_every": 10, "checkpoint_every": 0, "sample_every": 0}  # fmt: skip
    with torch_threads(1):
        train("autoencoder", {**common, "out": str(root / "ae"), "steps": 150, "lr": 2e-3})
        first_stage = root / "ae" / "first_stage.safetensors"
        summary = train(
            "ldm",
            {**common, "out": str(root / "ldm"), "steps": 300, "lr": 3e-3, "ema_decay": 0.95,
             "first_stage": str(first_stage), "sample_steps": DDIM_STEPS, "cover_prob": 0.3},
        )  # fmt: skip
    return {"root": root, "held_out": held_out, "export": root / "ldm" / "hs_ldm.safetensors", "summary": summary,
            "config": config, "first_stage": first_stage, "log": root / "ldm" / "loss.jsonl"}  # fmt: skip


def _held_out(folder):
    base = PairedFolder(folder, RESOLUTION)
    samples = [base[i] for i in range(len(base))]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["labels"] for s in samples])


def _colour_error(unet, layout_encoder, vq, alphas_cumprod, images, labels) -> float:
    """|per-class mean colour of the DDIM samples − that of the renderings|, averaged over the classes weighted by
    their area (at 16² thin classes such as hair are 1–2 px wide, below what the f = 2 autoencoder reproduces)."""
    paper5 = convert_labels(labels, CANONICAL, PAPER5)
    code = layout_encoder.encode_labels(paper5)
    with torch.no_grad():
        z = ddim_sample(unet, code, alphas_cumprod, DDIM_STEPS, torch.Generator().manual_seed(3))
        samples = ((vq.decode(z) + 1) / 2).clamp(0, 1)
    want = per_class_mean_colours(images, paper5, PAPER5.num_classes)
    got = per_class_mean_colours(samples, paper5, PAPER5.num_classes)
    area = torch.stack([(paper5 == c).sum() for c in range(PAPER5.num_classes)]).float()
    assert (area > 0).sum() >= 4  # background, hair, face, clothes at least
    errors = (got - want).abs().mean(1).nan_to_num(0.0)
    return float((errors * area).sum() / area.sum())


def test_trained_ldm_learns_the_class_colours_of_held_out_layouts(trained):
    log = [json.loads(line) for line in trained["log"].read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses

    # The exported file, read as the loader reads it, in the pack's inference modules (EMA weights).
    checkpoint = read_ldm_checkpoint(trained["export"])
    assert checkpoint.weights == "ema" and checkpoint.config.num_classes == PAPER5.num_classes
    config = checkpoint.config
    unet, layout_encoder = UNetModel(**config.unet).eval(), SpatialRescaler(**config.layout_encoder)
    vq = VQAutoencoder(**config.first_stage).eval()
    unet.load_state_dict(checkpoint.unet)
    layout_encoder.load_state_dict(checkpoint.layout_encoder)
    vq.load_state_dict(checkpoint.first_stage)
    alphas_cumprod = LDMTrainingModule(config).alphas_cumprod

    # The untrained model: the same construction (seed 0, as the trainer) with the same first stage.
    torch.manual_seed(0)
    untrained = LDMTrainingModule(config).eval()
    untrained.first_stage.load_state_dict(checkpoint.first_stage)

    images, labels = _held_out(trained["held_out"])
    with torch_threads(1):
        trained_error = _colour_error(unet, layout_encoder, vq, alphas_cumprod, images, labels)
        untrained_error = _colour_error(untrained.unet, untrained.layout_encoder, vq, alphas_cumprod, images, labels)
    assert trained_error < 0.7 * untrained_error, (trained_error, untrained_error)


def test_trained_ldm_runs_the_hs_ldm_template_on_the_server(comfy_server, photos, trained):
    """The exported file as it is, under a name of its own, in the headswap_hs_ldm template."""
    name = "hs_ldm_trained_here.safetensors"
    shutil.copy(trained["export"], comfy_server.models_dir("headswap_diffusion") / name)
    prompt, probes = pipeline.with_drawn_layouts(pipeline._twin("headswap_hs_ldm"))
    prompt[pipeline._node(prompt, "HeadSwapDiffusionLoader")]["inputs"]["ckpt_name"] = name
    prompt[pipeline._node(prompt, "HeadSwapSemanticMixingKSampler")]["inputs"]["steps"] = 3
    entry = pipeline._run(comfy_server, prompt)
    sampled = pipeline._read_latent(comfy_server, entry, probes["sampled"])
    height, width = pipeline.BODY_SIZE[1], pipeline.BODY_SIZE[0]
    assert sampled.shape == (1, 3, height // 2, width // 2)  # this model's VQ is f = 2
    assert torch.isfinite(sampled).all()
    assert comfy_server.output_files(entry, probes["result"])
