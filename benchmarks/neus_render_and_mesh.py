"""Latent SparseNeuS speed: rendering rays/s and mesh-extraction seconds, side by side in one run.

    python benchmarks/neus_render_and_mesh.py [--views 8] [--size 32] [--mesh-resolution 256] [--skip-dense]

Rendering: 8 SD-latent views (4 x 32 x 32) rendered back at 32 x 32 with 32 coarse + 32 importance samples
(64 per ray). It prints rays/s for an eval render, for a training step (forward + backward with the eikonal
term) with and without gradient checkpointing, the activation memory kept for backward in both, and the
peak resident memory of both training steps (each measured in its own process). Mesh: a conditioned field (8 views of features) queried on a 256^3 grid,
coarse-to-fine against the plain dense grid, then marching cubes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time

import torch
from peak_memory import PeakResident  # benchmarks/ is on sys.path when run as a script


def build(views: int, size: int, device: str):
    from tunemv.geometry.cameras import Cameras, orbit
    from tunemv.neus.latent_sparseneus import LatentSparseNeuS

    torch.manual_seed(0)
    model = LatentSparseNeuS(in_channels=4, num_coarse=32, num_importance=32).to(device)
    cameras = Cameras.stack([orbit(views, 20.0, resolution=size)]).to(device)  # [1, V]
    latents = torch.randn(1, views, 4, size, size, device=device)
    timesteps = torch.full((1, views), 500, device=device)
    return model, latents, timesteps, cameras


def train_step(model, latents, timesteps, cameras, size):
    from tunemv.neus.losses import NeuSLoss

    model.train()
    out = model(latents, timesteps, cameras, cameras, resolution=size)
    NeuSLoss(eikonal_weight=0.1)(out, torch.zeros_like(out.image))["total"].backward()


def peak_rss_of_training_step(views: int, size: int, checkpointing: bool, queue) -> None:
    """Peak resident memory above the pre-step level during one training step, sampled every millisecond
    (CPU tensors are not visible to tracemalloc, and ru_maxrss cannot be reset)."""
    torch.set_flush_denormal(True)
    model, latents, timesteps, cameras = build(views, size, "cpu")
    model.gradient_checkpointing = checkpointing
    with PeakResident(0.001) as memory:
        train_step(model, latents, timesteps, cameras, size)
    queue.put(memory.peak - memory.baseline)


def saved_for_backward_mib(model, latents, timesteps, cameras, size) -> float:
    """Bytes autograd keeps for backward after one forward + loss: the memory checkpointing trades for time."""
    from tunemv.neus.losses import NeuSLoss

    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(latents, timesteps, cameras, cameras, resolution=size)
        NeuSLoss(eikonal_weight=0.1)(out, torch.zeros_like(out.image))
    return sum(storages.values()) / 2**20


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument("--skip-dense", action="store_true", help="skip the slow dense-grid baseline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    from tunemv.neus.mesh import extract_mesh

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {args.device}")
    model, latents, timesteps, cameras = build(args.views, args.size, args.device)
    rays = args.views * args.size * args.size
    print(f"render: {args.views} views x {args.size}^2 = {rays} rays, 64 samples per ray")

    def render_eval():
        model.eval()
        with torch.no_grad():
            model(latents, timesteps, cameras, cameras)

    eval_seconds = timed(render_eval, args.repeats)
    print(f"  eval render            {eval_seconds:7.3f} s  {rays / eval_seconds:10.0f} rays/s")
    step_seconds = {}
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        step_seconds[checkpointing] = timed(lambda: train_step(model, latents, timesteps, cameras, args.size),
                                            args.repeats)
        label = "train step, checkpointed" if checkpointing else "train step             "
        print(f"  {label} {step_seconds[checkpointing]:7.3f} s  {rays / step_seconds[checkpointing]:10.0f} rays/s")
    print(f"  checkpointing time ratio: {step_seconds[True] / step_seconds[False]:.2f}x")
    saved = {}
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        saved[checkpointing] = saved_for_backward_mib(model, latents, timesteps, cameras, args.size)
    print(f"  activations kept for backward: {saved[False]:.0f} MiB plain, {saved[True]:.0f} MiB checkpointed "
          f"(ratio {saved[True] / saved[False]:.3f}x)")
    if args.device == "cpu":
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # large blocks go back to the OS when freed: RSS ~ live
        context = multiprocessing.get_context("spawn")
        peaks = {}
        for checkpointing in (False, True):
            queue = context.Queue()
            process = context.Process(target=peak_rss_of_training_step,
                                      args=(args.views, args.size, checkpointing, queue))
            process.start()
            peaks[checkpointing] = queue.get()
            process.join()
        print(f"  peak resident memory of a train step: {peaks[False]:.0f} MiB plain, {peaks[True]:.0f} MiB "
              f"checkpointed (ratio {peaks[True] / peaks[False]:.2f}x; one chunk is recomputed at a time)")

    model.eval()
    field = model.fields(latents, timesteps, cameras)[0]
    print(f"mesh: {args.mesh_resolution}^3 grid, field conditioned on {args.views} views")
    seconds = {}
    for coarse_to_fine in (True, False) if not args.skip_dense else (True,):
        start = time.perf_counter()
        mesh = extract_mesh(field.sdf, args.mesh_resolution, coarse_to_fine=coarse_to_fine, device=args.device)
        seconds[coarse_to_fine] = time.perf_counter() - start
        label = "coarse-to-fine" if coarse_to_fine else "dense         "
        print(f"  {label} {seconds[coarse_to_fine]:7.2f} s  ({len(mesh.vertices)} vertices)")
    if len(seconds) == 2:
        print(f"  coarse-to-fine speed-up: {seconds[False] / seconds[True]:.1f}x")


if __name__ == "__main__":
    main()
