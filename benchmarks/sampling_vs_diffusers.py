"""P3: tunemv's "2d" sampler / diffusers' own StableDiffusionPipeline on the same frozen backbone, side by side.

    python benchmarks/sampling_vs_diffusers.py [--unet tiny|sd15] [--views 8] [--steps 20] [--scheduler ddim]

Both sample the same prompt, seed and step count (CFG 7.5, latents out, no VAE decode); the script checks
that the outputs agree (max |difference|) and prints the time ratio, median of ``--repeats`` runs after one
warm-up. A pipeline folder is built in a temp dir (random weights: none can be downloaded here).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from denoiser_overhead import timed
from training_step import build_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import diffusers
    from diffusers import StableDiffusionPipeline

    from tunemv.adapters.control_branch import ControlBranch
    from tunemv.neus.latent_sparseneus import LatentSparseNeuS
    from tunemv.sampling.pipeline import MultiviewPipeline
    from tunemv.sampling.schedulers import SCHEDULERS

    diffusers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        build_pipeline(Path(folder), args.unet)
        theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        class_name, extra = SCHEDULERS[args.scheduler]
        theirs.scheduler = getattr(diffusers, class_name).from_config(theirs.scheduler.config, **extra)
        theirs.set_progress_bar_config(disable=True)
        from tunemv.adapters.backbones import Backbone

        backbone = Backbone.from_pretrained(folder)
        ours = MultiviewPipeline(backbone, LatentSparseNeuS(in_channels=4), ControlBranch.from_unet(backbone.unet))
        prompt = "a red chair"

        def run_theirs():
            generator = torch.Generator().manual_seed(0)
            return theirs(prompt, num_images_per_prompt=args.views, num_inference_steps=args.steps,
                          generator=generator, output_type="latent").images

        def run_ours():
            return ours(prompt, num_views=args.views, sampler="2d", scheduler=args.scheduler, steps=args.steps,
                        seed=0, progress=False).latents[0]

        with torch.no_grad():
            difference = (run_ours() - run_theirs()).abs().max().item()
            time_theirs = timed(run_theirs, args.repeats, "cpu")
            time_ours = timed(run_ours, args.repeats, "cpu")
    print(f"{args.unet} UNet, {args.views} views, {args.steps} {args.scheduler} steps, CFG 7.5, float32 on cpu "
          f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"median of {args.repeats}")
    print(f"diffusers StableDiffusionPipeline {time_theirs:8.3f} s")
    print(f"tunemv '2d' sampler               {time_ours:8.3f} s")
    print(f"P3  tunemv / diffusers            {time_ours / time_theirs:8.3f}   outputs max |diff| {difference:.2e}")


if __name__ == "__main__":
    main()
