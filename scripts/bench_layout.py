"""Benchmark: the four model-free layout stages against one SD1.5 UNet step, measured in the same run.

    python scripts/bench_layout.py            # 512² and 1024², batch 1 and 4 (the UNet at 1024² batch 4
                                              # takes minutes on a small CPU)
    python scripts/bench_layout.py --quick    # 512², batch 1 only (well under a minute of UNet time)
    python scripts/bench_layout.py --threads 1   # both sides single-threaded (shared, busy machines)

Stages (the nodes' ``execute``, as ComfyUI runs them): HeadSwapNeckAlign, HeadSwapLayoutBlend,
HeadSwapLayoutInpaint, HeadSwapSemanticCalibration, on procedurally drawn half-body layouts (a
long-haired body, another person's head photo at a different position and scale). Baseline: one
forward pass of ComfyUI's own ``UNetModel`` with the SD1.5 configuration (random weights) on the
latent of the same image size and batch. Goal: the four stages together take at most 2 % of that
step, so next to sampling they are negligible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from benchlib import load_comfy_and_pack, measure, print_ratio  # noqa: E402

GOAL_TIME = 0.02


def build_unet(device):
    """ComfyUI's SD1.5 UNet with random weights (comfy.ops layers start uninitialised: initialise them)."""
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from hs_testing.sd15 import SD15_UNET
    from hs_testing.tiny_models import init_random

    unet = UNetModel(**SD15_UNET, dtype=torch.float32, device=device, operations=comfy.ops.disable_weight_init)
    init_random(unet, seed=0)
    return unet.eval()


def stage_inputs(size: int, batch: int):
    """Head photo + layout and body layout at ``size``², drawn from the procedural generator."""
    import torch

    from comfyui_hs_diffusion.hs_models.layout import SemanticLayout
    from comfyui_hs_diffusion.hs_models.synthetic import Placement, draw_half_body, random_figure, render_photo

    g = torch.Generator().manual_seed(size + batch)
    s = size / 512
    body_figure = random_figure(g, long_hair=70.0)
    head_figure = random_figure(g, hat=True)
    body = draw_half_body(body_figure, Placement(scale=s, shift=(256 * s - 256, 250 * s - 250)), size, size)
    head = draw_half_body(head_figure, Placement(scale=1.15 * s, shift=(256 * s - 226, 250 * s - 280)), size, size)
    head_image = render_photo(head.labels, head.matrix)[None].repeat(batch, 1, 1, 1)
    head_layout = SemanticLayout(head.labels[None].repeat(batch, 1, 1), head.label_set)
    body_layout = SemanticLayout(body.labels[None].repeat(batch, 1, 1), body.label_set)
    return head_image, head_layout, body_layout


ALIGN = dict(mode="layout", scale_min=0.5, scale_max=2.0, max_rotation=0.0, scale_nudge=1.0, offset_x=0, offset_y=0)
BLEND = dict(keep_body_background=True, head_erosion=0.004, body_erosion=0.004, seam_band=0.01)
CALIBRATE = dict(latent_cell=8, min_region=0.0005)


def stage_calls(nodes, head_image, head_layout, body_layout):
    """The four stages as (node id, call) pairs; each call runs on the previous stage's real output."""
    align = lambda: nodes["HeadSwapNeckAlign"].execute(  # noqa: E731
        head_image=head_image, head_layout=head_layout, body_layout=body_layout, **ALIGN
    )
    aligned = align().result
    blend = lambda: nodes["HeadSwapLayoutBlend"].execute(head_layout=aligned[1], body_layout=body_layout, **BLEND)  # noqa: E731
    blended = blend().result
    inpaint = lambda: nodes["HeadSwapLayoutInpaint"].execute(layout=blended[0], backend="auto")  # noqa: E731
    completed = inpaint().result[0]
    calibrate = lambda: nodes["HeadSwapSemanticCalibration"].execute(  # noqa: E731
        layout=completed, body_layout=body_layout, head_mask=blended[1], body_mask=blended[2], **CALIBRATE
    )
    return [
        ("HeadSwapNeckAlign", align),
        ("HeadSwapLayoutBlend", blend),
        ("HeadSwapLayoutInpaint", inpaint),
        ("HeadSwapSemanticCalibration", calibrate),
    ]


def run_stages(nodes, head_image, head_layout, body_layout):
    """All four stages chained, as in a workflow."""
    aligned = (
        nodes["HeadSwapNeckAlign"]
        .execute(head_image=head_image, head_layout=head_layout, body_layout=body_layout, **ALIGN)
        .result
    )
    blended = nodes["HeadSwapLayoutBlend"].execute(head_layout=aligned[1], body_layout=body_layout, **BLEND).result
    completed = nodes["HeadSwapLayoutInpaint"].execute(layout=blended[0], backend="auto").result[0]
    return (
        nodes["HeadSwapSemanticCalibration"]
        .execute(layout=completed, body_layout=body_layout, head_mask=blended[1], body_mask=blended[2], **CALIBRATE)
        .result
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512², batch 1 only")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats of the stages (the UNet runs once)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for both sides (0 = torch's default). On a machine shared with other jobs, 1 "
        "avoids thread-synchronisation stalls that inflate many small operations far more than a UNet's big ones",
    )
    args = parser.parse_args()
    load_comfy_and_pack(cpu=True)
    import importlib

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    pack = importlib.import_module("comfyui_hs_diffusion.nodes")
    nodes = {node.GET_SCHEMA().node_id: node for node in pack.NODES}
    device = torch.device("cpu")
    cases = [(512, 1)] if args.quick else [(512, 1), (512, 4), (1024, 1), (1024, 4)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; goal: stages ≤ {GOAL_TIME:.0%} of a UNet step"
    )
    unet = build_unet(device)
    for size, batch in cases:
        print(f"\n{size}×{size}, batch {batch}")
        inputs = stage_inputs(size, batch)
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            stages = measure(
                f"layout stages ({size}², batch {batch})",
                lambda inputs=inputs: run_stages(nodes, *inputs),
                repeat=args.repeat,
            )
            for name, call in stage_calls(nodes, *inputs):
                print(f"    {measure(name, call, repeat=args.repeat)}")
            latent = torch.randn(batch, 4, size // 8, size // 8)
            timesteps = torch.full((batch,), 500.0)
            context = torch.randn(batch, 77, 768)
            step = measure(
                f"SD1.5 UNet forward ({size // 8}² latent, batch {batch})",
                lambda x=latent, t=timesteps, c=context: unet(x, timesteps=t, context=c),
                repeat=1,
                warmup=0,
            )
        print_ratio(stages, step, goal_time=GOAL_TIME)


if __name__ == "__main__":
    main()
