"""Seconds to sample V views with the multiview samplers on an SD-1.5-shaped backbone (random weights).

    python benchmarks/sampling_time.py --unet sd15 --views 8 --steps 50 --device cuda --dtype bfloat16

The pipeline folder is built as ``training_step.py`` builds it (SD-1.5 UNet widths, a tiny 2x VAE, a CLIP text
encoder of the UNet's width), with a fresh NeuS and control branch (cross-view after blocks 0 and 1). Times
"mv" and "consistency" (K = 0.5) with CFG 7.5 and DDIM, one warm-up run first; 256 px views (32x32 latents).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=("tiny", "sd15"), default="sd15")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    args = parser.parse_args()
    from training_step import build_pipeline

    from tunemv.adapters.backbones import Backbone
    from tunemv.adapters.control_branch import ControlBranch
    from tunemv.neus.latent_sparseneus import LatentSparseNeuS
    from tunemv.sampling.pipeline import MultiviewPipeline

    with tempfile.TemporaryDirectory() as folder:
        build_pipeline(Path(folder), args.unet)
        backbone = Backbone.from_pretrained(folder, torch_dtype=args.dtype)
    torch.manual_seed(0)
    branch = ControlBranch.from_unet(backbone.unet, cross_view_blocks=(0, 1)).float()
    neus = LatentSparseNeuS(in_channels=backbone.in_channels, background=backbone.background_latent.tolist())
    pipe = MultiviewPipeline(backbone, neus, branch).to(args.device)
    cuda = args.device.startswith("cuda")
    print(f"{args.unet} UNet, {args.views} views of {backbone.image_resolution} px, {args.steps} DDIM steps, CFG 7.5, "
          f"{args.dtype} backbone on {torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}")
    for sampler in ("mv", "consistency"):
        run = lambda steps, sampler=sampler: pipe("a red chair", num_views=args.views, steps=steps,  # noqa: E731
                                                 scheduler="ddim", sampler=sampler, seed=0, progress=False)
        run(2)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(args.steps)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"{sampler:<12} {seconds:8.2f} s   ({seconds / args.steps * 1e3:.0f} ms per step)")


if __name__ == "__main__":
    main()
