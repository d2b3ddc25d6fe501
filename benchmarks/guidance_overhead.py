"""P2: the per-step cost of consistency + mixed + CFG guidance against plain "mv" + CFG, side by side in one run.

    python benchmarks/guidance_overhead.py --config sd15 [--latent 32] [--views 8] [--ratio 0.5]

One sampling step of each sampler is what ``GuidedSampler.predict`` asks the denoiser for:
- plain "mv" + CFG:                 predict(("mv",)) with the empty prompt;
- consistency + mixed + CFG, a guided step (a fraction K of the steps): predict(("mv", "independent", "2d"))
  with "independent" for the prompt only (consistency guidance never reads ε_ind(∅));
  an unguided step: predict(("mv", "2d")).
Shared: those calls (frozen encoder once per prompt copy, NeuS once). Naive: one full forward per mode and
prediction needed (NeuS and the frozen encoder again each time). The per-step figure averages guided and unguided
steps at K = ``--ratio``. Target <= 1.35 shared, against about 2 naive. Random weights, true block widths.
"""

from __future__ import annotations

import argparse
import platform

import torch
from denoiser_overhead import add_denoiser_arguments, build_from_args, precision, timed

from tunemv.adapters.text import Text
from tunemv.sampling.samplers import ConsistencySampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_denoiser_arguments(parser)
    parser.add_argument("--ratio", type=float, default=0.5, help="consistency guidance fraction K")
    args = parser.parse_args()
    denoiser, x, t, cameras, text = build_from_args(args)
    uncond = torch.zeros_like(text)

    cond_only = ConsistencySampler.cond_only_modes  # what the samplers pass

    def shared(modes):
        return lambda: denoiser.predict(x, t, cameras, Text(text), modes=modes, uncond=Text(uncond),
                                        cond_only=cond_only)

    def naive(modes):
        return lambda: [denoiser(x, t, cameras, hidden, mode=mode) for mode in modes
                        for hidden in ((text,) if mode in cond_only else (text, uncond))]

    with torch.no_grad(), precision(args):
        times = {(kind, name): timed(make(modes), args.repeats, args.device)
                 for kind, make in (("shared", shared), ("naive", naive))
                 for name, modes in (("plain", ("mv",)), ("guided", ("mv", "independent", "2d")),
                                     ("unguided", ("mv", "2d")))}

    k = args.ratio
    print(f"{args.config} UNet, {args.views} views of 4 x {args.latent} x {args.latent} latents, {args.dtype} on "
          f"{args.device} ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"median of {args.repeats}; K = {k}")
    for kind in ("shared", "naive"):
        plain, guided, unguided = (times[kind, name] for name in ("plain", "guided", "unguided"))
        step = k * guided + (1 - k) * unguided
        print(f"{kind:>6}: mv+CFG {plain:7.3f} s | guided step {guided:7.3f} s ({guided / plain:5.2f}x) | "
              f"unguided step {unguided:7.3f} s ({unguided / plain:5.2f}x) | "
              f"P2 per step at K={k}: {step / plain:5.3f}")
    shared_step = k * times["shared", "guided"] + (1 - k) * times["shared", "unguided"]
    naive_step = k * times["naive", "guided"] + (1 - k) * times["naive", "unguided"]
    print(f"P2 shared  {shared_step / times['shared', 'plain']:6.3f}   (target <= 1.35)")
    print(f"P2 naive   {naive_step / times['naive', 'plain']:6.3f}   (about 2 expected); shared step / naive step "
          f"{shared_step / naive_step:5.3f}")


if __name__ == "__main__":
    main()
