"""Seconds per training step and peak resident memory of MultiviewAdapterSystem (random weights, CPU or GPU).

    python benchmarks/training_step.py --unet tiny  [--views 4 --supervision 4 --latent 16]
    python benchmarks/training_step.py --unet sd15  --views 8 --supervision 8 --latent 32 --checkpointing
    python benchmarks/training_step.py --config configs/tiny.yaml     # a fit config's model and batch shape
    python benchmarks/training_step.py --unet sd15 ... --device cuda --backbone-dtype bfloat16 --autocast bf16

A diffusers pipeline folder is built in a temp dir: the UNet at the chosen shape (tiny, or SD 1.5's true
widths), a tiny 2x VAE and a CLIP text encoder of the UNet's cross-attention width. Every step goes through
mode "mv" with NeuS and cross-view attention (no dropouts). Peak memory is sampled from /proc on CPU and is
``torch.cuda.max_memory_allocated`` on a GPU. ``--autocast`` is what ``trainer.precision`` bf16-mixed/16-mixed do.
With ``--config``, the model is built from the config's ``model:`` section (its real backbone folder) and the
batch has the config's ``data:`` batch size, views, supervision views and resolution.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakResident


def build_pipeline(folder: Path, unet_shape: str) -> None:
    from denoiser_overhead import SD15, TINY
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_pipelines import clip_config, clip_tokenizer, tiny_vae
    from transformers import CLIPTextModel

    config = SD15 if unet_shape == "sd15" else TINY
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_config(tokenizer, config["cross_attention_dim"])).eval()
    StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                            unet=UNet2DConditionModel(**config), scheduler=PNDMScheduler(skip_prk_steps=True),
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--supervision", type=int, default=4)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cross-view-blocks", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--config", help="a fit config: its model and data shape replace the options above")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    from tunemv.data.batch import MultiviewItem, ViewSet
    from tunemv.geometry.cameras import Cameras, orbit
    from tunemv.training.config import CrossViewConfig, DropoutConfig, ValidationConfig
    from tunemv.training.system import MultiviewAdapterSystem

    objects = 1
    if args.config:
        import yaml

        config = yaml.safe_load(Path(args.config).read_text())
        data = config["data"].get("init_args", config["data"])
        model = {**config["model"], "dropouts": DropoutConfig(0, 0, 0), "validation": ValidationConfig(steps=0)}
        system = MultiviewAdapterSystem(**model)
        objects, args.views, args.supervision = data["batch_size"], data["num_views"], data["num_supervision_views"]
        size = data["resolution"]
        args.unet, args.latent = f"{args.config}: {model['backbone']}", size // system.backbone.vae_scale_factor
        args.cross_view_blocks = list(system.settings.cross_view.blocks)
        args.checkpointing = model.get("gradient_checkpointing", False)
    else:
        with tempfile.TemporaryDirectory() as folder:
            build_pipeline(Path(folder), args.unet)
            system = MultiviewAdapterSystem(folder, backbone_dtype=args.backbone_dtype,
                                            cross_view=CrossViewConfig(blocks=tuple(args.cross_view_blocks)),
                                            dropouts=DropoutConfig(0, 0, 0), gradient_checkpointing=args.checkpointing)
        size = args.latent * 2  # the tiny VAE downsamples 2x
    device = torch.device(args.device)
    system = system.to(device)
    trainable = [p for p in system.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    total = args.views + args.supervision
    cameras = Cameras.stack([orbit(total, 20.0, resolution=size)] * objects).to(device)
    images = lambda views: torch.rand(objects, views, 3, size, size, device=device) * 2 - 1  # noqa: E731
    masks = lambda views: torch.ones(objects, views, 1, size, size, device=device)  # noqa: E731
    def view_set(count: int, offset: int) -> ViewSet:
        return ViewSet(images=images(count), masks=masks(count), depths=torch.zeros_like(masks(count)),
                       cameras=cameras[:, offset: offset + count],
                       view_indices=torch.arange(offset, offset + count, device=device).expand(objects, -1))

    batch = MultiviewItem(["a red chair"] * objects, list(range(objects)), view_set(args.views, 0),
                          view_set(args.supervision, args.views))
    system.train()

    autocast = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast]
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = system.losses(batch)["total"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    cuda = device.type == "cuda"
    step()  # warm-up; also allocates the optimizer state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    with PeakResident(0.005) as memory:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
    if cuda:
        memory.baseline, memory.peak = before, torch.cuda.max_memory_allocated() / 2**20
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    print(f"{args.unet} UNet, {objects} object(s) x {args.views} input + {args.supervision} supervision views, "
          f"{args.latent}x{args.latent} latents, cross-view after {tuple(args.cross_view_blocks)}, gradient "
          f"checkpointing {'on' if args.checkpointing else 'off'}, {device} "
          f"({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}), backbone "
          f"{args.backbone_dtype}, autocast {args.autocast}, torch {torch.__version__}")
    print(f"trainable parameters {count(trainable):,}; frozen backbone {count(system.backbone.parameters()):,}")
    print(f"seconds per training step     {seconds:8.2f}   (mean of {args.steps})")
    kind = "GPU allocated" if cuda else "resident"
    print(f"{kind} memory before step   {memory.baseline:8.0f} MiB")
    print(f"peak {kind} during steps    {memory.peak:8.0f} MiB")


if __name__ == "__main__":
    main()
