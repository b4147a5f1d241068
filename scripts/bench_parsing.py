"""Benchmark: HeadSwapFaceParse against the bare network forward on the same inputs (CPU by default).

    python scripts/bench_parsing.py [--weights FILE] [--sizes 512] [--batches 1 4] [--repeat 5] [--rounds 3]
                                    [--device cpu|auto] [--threads N]

Both sides see the same 512² RGB batches: the baseline is the parsing network's forward alone
(normalisation + BiSeNet → full-resolution logits), the candidate is the whole node (input checks,
letterboxing, forward, argmax, canonical8 mapping, labels back to the image, layout, colour preview).
Goal: the node's overhead over the bare forward ≤ 10 % in time. Baseline and node are measured in
alternating rounds and the median round is reported, so a busy machine affects both alike. With
--threads 1 the process CPU time is reported as well, which other processes on a shared machine
barely disturb (with more threads, idle OpenMP workers spin and inflate it, so it is not shown). Without --weights a BiSeNet with
random weights is used (same architecture and cost as 79999_iter.pth); the parity fixture is used
when it is found next to the checkout.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import PACK_DIR, Measurement, load_comfy_and_pack, measure, print_ratio  # noqa: E402

FIXTURE = PACK_DIR / ".." / "shared" / "fixtures" / "bisenet19_random.safetensors"


def _cpu_ms(fn, repeat: int) -> float:
    """Median process CPU time of ``fn()`` in ms (all threads): unlike wall time, barely affected by other
    processes competing for the cores."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2] * 1000


def _median_of(measurements: list[Measurement]) -> Measurement:
    """Median time over rounds (each already a median over repeats); the largest peak memory."""
    times = sorted(m.seconds for m in measurements)
    return Measurement(measurements[0].name, times[len(times) // 2], max(m.peak_bytes for m in measurements))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="a parsing model file (default: the fixture or random)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/node rounds (evens out load)")
    parser.add_argument("--device", choices=["cpu", "auto"], default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    load_comfy_and_pack(cpu=args.device == "cpu")
    import comfy.model_management as mm
    import folder_paths
    import torch
    from safetensors.torch import save_file

    if args.threads:
        torch.set_num_threads(args.threads)

    from comfyui_hs_diffusion.hs_models.parsing.bisenet import BiSeNet
    from comfyui_hs_diffusion.nodes import face_parser as face_parser_module
    from comfyui_hs_diffusion.nodes import parsing as parsing_nodes

    models = Path(tempfile.mkdtemp(prefix="bench_parsing_"))
    temp = models / "temp"
    temp.mkdir()
    folder_paths.set_temp_directory(str(temp))  # the node's UI preview is written here
    folder_paths.add_model_folder_path("headswap_parsing", str(models), is_default=True)
    if args.weights:
        shutil.copy(args.weights, models / args.weights.name)
        name = args.weights.name
    elif FIXTURE.exists():
        shutil.copy(FIXTURE, models / "bisenet.safetensors")
        name = "bisenet.safetensors"
    else:
        torch.manual_seed(0)
        save_file(BiSeNet().state_dict(), str(models / "bisenet.safetensors"))
        name = "bisenet.safetensors"

    face_parser = face_parser_module.load_face_parser(name, "auto")
    node = parsing_nodes.HeadSwapFaceParse
    network = face_parser.network
    device = face_parser.patcher.load_device
    print(
        f"device {device}, {face_parser.kind} '{name}', dtype {face_parser.dtype}, torch threads {torch.get_num_threads()}"
    )

    try:
        with torch.inference_mode():
            for size in args.sizes:
                for batch in args.batches:
                    torch.manual_seed(1)
                    images = torch.rand(batch, size, size, 3)
                    canvases = images.permute(0, 3, 1, 2).contiguous()
                    mm.load_models_gpu([face_parser.patcher], force_full_load=True)

                    def bare_forward(canvases=canvases):
                        return network.logits(canvases.to(device))

                    def face_parse_node(images=images):
                        return node.execute(
                            parser=face_parser, image=images, mode="whole image", min_region_percent=0.0, crop_scale=1.6
                        )

                    print(f"{size}x{size}, batch {batch}:")
                    rounds = [
                        (
                            measure("bare forward", bare_forward, repeat=args.repeat, device=device),
                            measure("HeadSwapFaceParse", face_parse_node, repeat=args.repeat, device=device),
                        )
                        for _ in range(args.rounds)
                    ]
                    baseline = _median_of([r[0] for r in rounds])
                    candidate = _median_of([r[1] for r in rounds])
                    single_thread = torch.get_num_threads() == 1
                    print(
                        f"  images/s: bare forward {batch / baseline.seconds:.2f}, "
                        f"HeadSwapFaceParse {batch / candidate.seconds:.2f}"
                    )
                    print_ratio(candidate, baseline, goal_time=1.10)
                    if not single_thread:
                        continue  # idle OpenMP workers spin between parallel regions and inflate CPU time
                    cpu_baseline = statistics.median(_cpu_ms(bare_forward, args.repeat) for _ in range(args.rounds))
                    cpu_candidate = statistics.median(_cpu_ms(face_parse_node, args.repeat) for _ in range(args.rounds))
                    cpu_ratio = cpu_candidate / cpu_baseline
                    print(
                        f"  CPU time: bare forward {cpu_baseline:.2f} ms, HeadSwapFaceParse {cpu_candidate:.2f} ms, "
                        f"ratio {cpu_ratio:.3f}x (goal ≤ 1.10x: {'met' if cpu_ratio <= 1.10 else 'NOT met'})"
                    )
    finally:
        shutil.rmtree(models, ignore_errors=True)


if __name__ == "__main__":
    main()
