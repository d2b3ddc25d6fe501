"""MultiviewDenoiser cost against the frozen UNet, side by side in one run (random weights, true block widths).

    python benchmarks/denoiser_overhead.py --config sd15 [--latent 32] [--views 8] [--device cpu] [--dtype float32]
    python benchmarks/denoiser_overhead.py --config tiny

P1: one "mv" forward (NeuS render + control branch with cross-view attention + frozen UNet) / the frozen UNet
forward on the same V views. Target <= 1.6.
Shared encoder: ``predict(modes=("mv", "independent", "2d"))`` / three separate forwards. Target <= 0.7.
Each figure is the median of ``--repeats`` timed runs after one warm-up, all under ``torch.no_grad``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

SD15 = dict(  # Stable Diffusion 1.5's UNet shape (weights random: none can be downloaded here)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)


def build(config: str, latent: int, views: int, device: str, dtype: torch.dtype, cross_view_blocks):
    from diffusers import UNet2DConditionModel

    from tunemv.adapters.control_branch import ControlBranch
    from tunemv.adapters.denoiser import MultiviewDenoiser
    from tunemv.geometry.cameras import Cameras, orbit
    from tunemv.neus.latent_sparseneus import LatentSparseNeuS

    torch.manual_seed(0)
    unet_config = SD15 if config == "sd15" else TINY
    unet = UNet2DConditionModel(**unet_config)
    branch = ControlBranch.from_unet(unet, cross_view_blocks=cross_view_blocks, cross_view_heads=8)
    for parameter in branch.parameters():  # wake the zero layers: cost must not depend on zeros
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.01)
    # As a user runs it: the frozen UNet stored in ``dtype``, NeuS, the branch, cameras and inputs in fp32, under
    # autocast (``precision``) when ``dtype`` is a half type.
    denoiser = MultiviewDenoiser(unet.to(device, dtype), LatentSparseNeuS(in_channels=4), branch.to(device)).eval()
    denoiser.neus.to(device)
    x = torch.randn(1, views, 4, latent, latent, device=device)
    t = torch.full((1, views), 500, device=device)
    cameras = Cameras.stack([orbit(views, 20.0, resolution=latent)]).to(device)
    text = torch.randn(1, 77, unet_config["cross_attention_dim"], device=device)
    return denoiser, x, t, cameras, text


def precision(args: argparse.Namespace):
    """Autocast in the backbone's half type, as ``MultiviewPipeline`` samples and bf16-mixed trains."""
    dtype = getattr(torch, args.dtype)
    return torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype != torch.float32)


def timed(fn, repeats: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_denoiser_arguments(parser: argparse.ArgumentParser) -> None:
    """The shape and device options every denoiser benchmark takes."""
    parser.add_argument("--config", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cross-view-blocks", type=int, nargs="*", default=[0, 1])


def build_from_args(args: argparse.Namespace):
    """``build`` for parsed ``add_denoiser_arguments`` options (flushing denormals on CPU)."""
    if args.device == "cpu":
        torch.set_flush_denormal(True)
    return build(args.config, args.latent, args.views, args.device, getattr(torch, args.dtype),
                 tuple(args.cross_view_blocks))


def main() -> None:
    from tunemv.adapters.text import Text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_denoiser_arguments(parser)
    args = parser.parse_args()
    denoiser, x, t, cameras, text = build_from_args(args)
    unet = denoiser.unet
    flat_x, flat_t = x.flatten(0, 1), t.flatten()
    flat_text = text.expand(args.views, -1, -1)
    modes = ("mv", "independent", "2d")
    with torch.no_grad(), precision(args):
        frozen = timed(lambda: unet(flat_x.to(unet.dtype), flat_t, flat_text.to(unet.dtype)), args.repeats, args.device)
        mv = timed(lambda: denoiser(x, t, cameras, text, mode="mv"), args.repeats, args.device)
        neus = timed(lambda: denoiser.render_condition(x, t, cameras), args.repeats, args.device)
        separate = timed(lambda: [denoiser(x, t, cameras, text, mode=m) for m in modes], args.repeats, args.device)
        shared = timed(lambda: denoiser.predict(x, t, cameras, Text(text), modes=modes), args.repeats, args.device)

    print(f"{args.config} UNet, {args.views} views of 4 x {args.latent} x {args.latent} latents, {args.dtype} on "
          f"{args.device} ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"cross-view attention after down blocks {tuple(args.cross_view_blocks)}; median of {args.repeats}")
    print(denoiser.parameter_report())
    print(f"frozen UNet forward            {frozen:8.3f} s")
    print(f"'mv' forward                   {mv:8.3f} s   (of which NeuS render {neus:.3f} s)")
    print(f"P1  mv / frozen UNet           {mv / frozen:8.3f}   (target <= 1.6)")
    print(f"three separate forwards        {separate:8.3f} s")
    print(f"predict(mv, independent, 2d)   {shared:8.3f} s")
    print(f"shared encoder / separate      {shared / separate:8.3f}   (target <= 0.7)")


if __name__ == "__main__":
    main()
