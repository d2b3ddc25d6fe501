"""xformers' memory-efficient attention against torch's SDPA for the cross-view attention, side by side.

    python benchmarks/cross_view_kernels.py [--device cuda] [--dtype bfloat16] [--views 8] [--latent 32]

The shapes of SD-1.5's first cross-view block (320 channels, 4 heads) at ``--latent``^2 latents: one query per
pixel of every view over (V − 1) × P candidates (P = 8 ray samples), with a NeuS-weight bias and masked
(-inf) candidates, as ``CrossViewAttention.forward`` calls it. Prints the largest output difference and the
time ratio xformers / SDPA (median of ``--repeats`` after one warm-up). Without xformers it says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tunemv.adapters.cross_view_attention import attention

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denoiser_overhead import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--channels", type=int, default=320)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    queries = args.views * args.latent**2
    candidates = args.views * args.points  # every view j, the own one masked out as in the forward
    head_dim = args.channels // args.heads
    draw = lambda *shape: torch.randn(*shape, generator=generator).to(device, dtype)  # noqa: E731
    query, key, value = draw(queries, args.heads, 1, head_dim), draw(queries, args.heads, candidates, head_dim), \
        draw(queries, args.heads, candidates, head_dim)
    weights = torch.rand(queries, 1, 1, candidates, generator=generator).clamp(min=1e-6)
    bias = weights.log().masked_fill(torch.rand(weights.shape, generator=generator) < 0.2, float("-inf"))
    bias = bias.expand(-1, args.heads, -1, -1).to(device, dtype)
    print(f"{queries:,} queries x {candidates} candidates, {args.heads} heads of {head_dim}, {args.dtype} on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    sdpa = attention(query, key, value, bias, backend="sdpa")
    sdpa_seconds = timed(lambda: attention(query, key, value, bias, backend="sdpa"), args.repeats, args.device)
    print(f"sdpa      {sdpa_seconds * 1e3:9.3f} ms")
    try:
        import xformers  # noqa: F401
    except ImportError:
        print("xformers  not installed: no comparison (pip install 'tunemv[xformers]')")
        return
    ours = attention(query, key, value, bias, backend="xformers")
    seconds = timed(lambda: attention(query, key, value, bias, backend="xformers"), args.repeats, args.device)
    difference = (ours.float() - sdpa.float()).abs().max().item()
    tolerance = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10 if dtype == torch.float16 else 1e-5
    print(f"xformers  {seconds * 1e3:9.3f} ms   xformers / sdpa = {seconds / sdpa_seconds:.3f}")
    print(f"max |xformers - sdpa| = {difference:.2e} ({'within' if difference <= 8 * tolerance else 'OUTSIDE'} "
          f"{args.dtype} tolerance {8 * tolerance:.1e})")


if __name__ == "__main__":
    main()
