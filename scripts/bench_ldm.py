#!/usr/bin/env python
"""One denoising step of the full-size semantic-mixing LDM: through ComfyUI vs the bare UNet module.

The model is LDM semantic-synthesis size (docs/method.md §8.4: model_channels 128, channel_mult [1,4,8], 2 res
blocks, 8 heads; about 215 M UNet parameters) with random weights. For each image size the same inputs
go through

* baseline:  the bare ``hs_models`` UNet (``torch.nn`` layers) on cat[x·c_in, s] and t;
* candidate: our MODEL's ``apply_model`` (``comfy.ops`` layers, loaded by ``load_models_gpu``; it
  scales the input, concatenates the layout code, converts σ to t and computes the denoised latent),

in the same run, and the script prints time, peak memory and their ratios (goal on the CPU: ≤ 1.05×
time). On a GPU (``--device cuda``) both run in ``--dtype`` (fp16/bf16/fp32) with SDPA attention, and the
absolute step time is printed too. The layout encoding τ_θ runs once per sampling run, not per step; its
time is printed for reference.

    python scripts/bench_ldm.py                  # CPU, 256² and 512²
    python scripts/bench_ldm.py --device cuda --dtype fp16 --sizes 256 512 1024
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Measurement, load_comfy_and_pack, measure, print_ratio  # noqa: E402

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def interleaved(named, repeat: int, device) -> tuple[list[Measurement], dict[str, float]]:
    """Time two candidates in alternating order (AB BA AB …, one warm-up each), then their peak memory.

    A shared machine's load drifts; alternating spreads it over both. Besides the median wall times (what
    ``print_ratio`` compares) it returns drift-robust ratios: of the fastest runs, the median of the per-round
    ratios, and of the median process CPU times (on the CPU, time other processes take is not counted).
    """
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    wall: dict[str, list[float]] = {name: [] for name, _ in named}
    cpu: dict[str, list[float]] = {name: [] for name, _ in named}
    for _, fn in named:
        fn()
    for round_index in range(repeat):
        for name, fn in named if round_index % 2 == 0 else named[::-1]:
            gc.collect()
            sync()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    peaks = {name: measure(name, fn, repeat=1, warmup=0, device=device).peak_bytes for name, fn in named}
    (base, base_wall), (cand, cand_wall) = wall.items()
    robust = {
        "fastest": min(cand_wall) / min(base_wall),
        "paired": statistics.median(c / b for b, c in zip(base_wall, cand_wall, strict=True)),
        "cpu": statistics.median(cpu[cand]) / statistics.median(cpu[base]),
    }
    return [Measurement(name, statistics.median(wall[name]), peaks[name]) for name, _ in named], robust


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sides in pixels")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp32 on CPU, fp16 on CUDA")
    parser.add_argument("--repeat", type=int, default=6, help="runs per candidate (alternating)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_comfy_and_pack(cpu=device.type == "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    import comfy.model_management as mm

    from comfyui_hs_diffusion.hs_models.labels import UNKNOWN
    from comfyui_hs_diffusion.hs_models.ldm import LDMCheckpoint, SpatialRescaler, UNetModel, builtin_config
    from comfyui_hs_diffusion.nodes.diffusion_model import build_model

    dtype_name = args.dtype or ("fp32" if device.type == "cpu" else "fp16")
    dtype = getattr(torch, DTYPES[dtype_name])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # same arithmetic in both paths; fp32 stays fp32
        torch.backends.cudnn.allow_tf32 = False
    config = builtin_config("semantic_synthesis256")
    torch.manual_seed(0)
    bare = UNetModel(**config.unet).eval().requires_grad_(False)
    tau = SpatialRescaler(**config.layout_encoder)
    checkpoint = LDMCheckpoint(
        config, bare.state_dict(), {}, tau.state_dict(), weights="live", config_source="random weights"
    )
    patcher = build_model(checkpoint, weight_dtype=dtype_name)
    bare = bare.to(device, dtype)
    model = patcher.model
    params = sum(p.numel() for p in bare.parameters())
    print(
        f"device {device} ({torch.get_num_threads()} CPU threads), dtype {dtype_name}, UNet {params / 1e6:.1f} M params"
    )
    print(f"ComfyUI {type(patcher).__name__}, weight dtype {model.get_dtype()}, manual cast {model.manual_cast_dtype}")
    mm.load_models_gpu([patcher], force_full_load=True)

    sigma = model.model_sampling.sigmas[500:501].to(device).repeat(args.batch)
    timestep = model.model_sampling.timestep(sigma).float()
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    generator = torch.Generator().manual_seed(1)
    for size in args.sizes:
        side = size // config.vae_factor
        x = torch.randn(args.batch, 3, side, side, generator=generator).to(device)
        labels = torch.randint(0, config.num_classes, (1, size, size), generator=generator)
        labels[:, :8, :8] = UNKNOWN
        code = model.layout_encoder.encode_labels(labels.to(device), unknown=UNKNOWN).to(device)
        code = code.repeat(args.batch, 1, 1, 1)
        unet_input = torch.cat([x * c_in[:, None, None, None], code], dim=1).to(dtype)

        def baseline(unet_input=unet_input):
            with torch.inference_mode():
                return bare(unet_input, timestep)

        def candidate(x=x, code=code):
            with torch.inference_mode():
                return model.apply_model(x, sigma, c_concat=code)

        with torch.inference_mode():
            eps_bare = baseline().float()
            denoised = candidate()
            eps_comfy = (x - denoised) / sigma[:, None, None, None]
        agreement = float((eps_bare - eps_comfy).abs().max())
        print(f"\n{size}×{size} image, latent {side}×{side}, batch {args.batch} (max |ε difference| {agreement:.2e})")
        gc.collect()
        (base, comfy), robust = interleaved(
            [("bare UNet module   ", baseline), ("ComfyUI apply_model", candidate)], args.repeat, device
        )
        print_ratio(comfy, base, goal_time=1.05 if device.type == "cpu" else None)
        print(
            f"  ratio time of the fastest runs {robust['fastest']:.3f}x, median of paired runs {robust['paired']:.3f}x, "
            f"process CPU time {robust['cpu']:.3f}x"
        )
        if device.type == "cuda":
            print(f"  absolute step time on {torch.cuda.get_device_name(device)}: {comfy.seconds * 1000:.1f} ms")
        tau_time = measure(
            "layout encoding τ_θ (once per run)",
            lambda labels=labels: model.layout_encoder.encode_labels(labels.to(device), unknown=UNKNOWN),
            repeat=args.repeat,
            device=device,
        )
        print(f"  {tau_time}")


if __name__ == "__main__":
    main()
