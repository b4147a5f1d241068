"""Benchmark: the semantic-mixing KSampler against ComfyUI's stock KSampler on the same MODEL, latent,
steps and seed, measured in the same run. The cases are interleaved so that load from other processes hits
them alike; wall time is the fastest of the repeats (the least disturbed run: interference only ever adds
time), peak memory (above the level before each call) the median of the repeats.

Baseline: the stock KSampler inpainting the same composite latent under the same noise mask (the closest
core equivalent; the mixing adds nothing to the UNet's work). Candidates: shared noise (the core path),
fresh noise per step (the paper), and fresh noise with a dilation schedule and soft masks by noise level.
Goals: ≤ 1.05× time, ≤ 1.10× peak memory.

    python scripts/bench_sampler.py            # quick: tiny UNet, SD1.5-sized UNet at 128² (a few minutes on CPU)
    python scripts/bench_sampler.py --full     # SD1.5 at 512² (64×64 latent), more steps and repeats
    python scripts/bench_sampler.py --sd-cells 64 --sd-steps 4 --sd-repeat 3   # 512², shorter
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchlib import Measurement, load_comfy_and_pack, measure, print_ratio

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))

GOAL_TIME, GOAL_MEMORY = 1.05, 1.10


def sd15_sized_model():
    """A random-weight UNet with SD1.5's exact configuration, as a ComfyUI MODEL (fp32 on CPU)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    from hs_testing.sd15 import SD15_UNET
    from hs_testing.tiny_models import init_random

    config = comfy.supported_models.SD15(dict(SD15_UNET))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    init_random(model.diffusion_model, seed=0)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def bench(title: str, model, context_dim: int, cells: int, steps: int, repeat: int) -> None:
    import torch

    import nodes
    from comfyui_hs_diffusion.nodes.sampling import HeadSwapSemanticMixingKSampler
    from hs_testing.tiny_models import conditioning

    g = torch.Generator().manual_seed(0)
    head = {"samples": torch.randn(1, 4, cells, cells, generator=g)}
    body = {"samples": torch.randn(1, 4, cells, cells, generator=g)}
    head_keep = torch.zeros(1, cells, cells)
    head_keep[:, : cells * 3 // 8] = 1.0
    body_keep = torch.zeros(1, cells, cells)
    body_keep[:, cells * 5 // 8 :] = 1.0
    positive, negative = conditioning(seed=1, dim=context_dim), conditioning(seed=2, dim=context_dim)
    composite = body["samples"] * body_keep[:, None] + head["samples"] * head_keep[:, None]
    stock_latent = {"samples": composite, "noise_mask": 1.0 - head_keep - body_keep}

    def stock():
        return nodes.KSampler().sample(model, 1, steps, 5.0, "euler", "normal", positive, negative, stock_latent, 1.0)

    def ours(noise_mode, dilation="", soft="blend"):
        def run():
            return HeadSwapSemanticMixingKSampler.execute(
                model, positive, negative, head, head_keep, body, body_keep, 1, steps, 5.0, "euler", "normal",
                1.0, noise_mode, 0.0, 1.0, dilation, soft, True,
            )  # fmt: skip

        return run

    cases = {
        "stock KSampler + noise_mask": stock,
        "semantic mixing, shared noise": ours("shared"),
        "semantic mixing, fresh noise": ours("fresh"),
        "fresh noise + dilation + soft masks": ours("fresh", "2, 1, 0", "by noise level"),
    }
    with torch.inference_mode():
        for fn in cases.values():
            fn()  # warm-up: model load, allocator, kernels
        samples: dict[str, list[Measurement]] = {name: [] for name in cases}
        for _ in range(repeat):  # interleaved, so load changes on a shared machine hit every case alike
            for name, fn in cases.items():
                samples[name].append(measure(name, fn, repeat=1, warmup=0))
    result = {
        name: Measurement(name, min(m.seconds for m in ms), int(statistics.median(m.peak_bytes for m in ms)))
        for name, ms in samples.items()
    }
    print(f"\n{title}: {cells}×{cells} latent, {steps} steps, euler/normal, cfg 5; {repeat} interleaved repeats")
    baseline = result.pop("stock KSampler + noise_mask")
    for candidate in result.values():
        print_ratio(candidate, baseline, GOAL_TIME, GOAL_MEMORY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="SD1.5 at 64×64 latent cells, 20 steps, 5 repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--sd-cells", type=int, help="SD1.5-sized run: latent side in cells (64 = 512² image)")
    parser.add_argument("--sd-steps", type=int, help="SD1.5-sized run: sampling steps")
    parser.add_argument("--sd-repeat", type=int, help="SD1.5-sized run: interleaved repeats")
    args = parser.parse_args()
    load_comfy_and_pack(cpu=True)
    import comfy.utils
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hs_testing.tiny_models import CONTEXT_DIM, tiny_model

    comfy.utils.PROGRESS_BAR_ENABLED = False
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    bench("tiny UNet", tiny_model(channels=4), CONTEXT_DIM, cells=64, steps=10, repeat=15)
    model = sd15_sized_model()
    cells, steps, repeat = (64, 20, 5) if args.full else (16, 3, 5)
    bench(
        "SD1.5-sized UNet",
        model,
        768,
        cells=args.sd_cells or cells,
        steps=args.sd_steps or steps,
        repeat=args.sd_repeat or repeat,
    )


if __name__ == "__main__":
    main()
