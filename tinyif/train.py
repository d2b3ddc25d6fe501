"""``tunemv foundation train-backbone``: train the tiny IF-like backbone on single procedural views.

ε-prediction DDPM loss on the cosine schedule; the UNet and the T5 encoder train jointly; 10% of the captions
are dropped to "" so classifier-free guidance works. The learning rate warms up, then follows a cosine over the
run's progress, which is the larger of steps/max_steps and minutes/max_minutes: a wall-clock cap still ends at a
low rate. An EMA of the weights is what gets saved, every ``checkpoint_every`` steps and at the end, as an
``IFPipeline`` folder that ``Backbone.from_pretrained`` loads.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from tunemv.data.single_views import RenderConfig, RenderedViews, render_views
from tunemv.tinyif.config import load_config, resolve_device
from tunemv.tinyif.model import (
    TinyIFConfig,
    build_parts,
    count_parameters,
    encode_tokens,
    save_pipeline,
    tokenize,
)


@dataclass
class BackboneTrainConfig:
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto": bf16 on CUDA, fp32 on CPU
    threads: int = 1  # torch CPU threads
    batch_size: int = 32
    max_steps: int = 3000
    max_minutes: float = 40.0  # wall-clock cap for the training loop (rendering not included)
    learning_rate: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    snr_gamma: float = 0.0  # Min-SNR loss weighting; 0 = plain ε-MSE
    text_dropout: float = 0.1  # fraction of captions replaced by "" (the CFG unconditional prompt)
    alt_caption_prob: float = 0.3  # fraction of views captioned by one of their alternative captions
    ema_max_decay: float = 0.9995
    ema_power: float = 0.6667  # EMA warmup: decay = 1 - (1 + step) ** -power, capped at ema_max_decay
    log_every: int = 25
    checkpoint_every: int = 500
    out: str = "models/tiny-if"
    init_from: str | None = None  # continue from a saved pipeline folder of the same recipe (fresh optimizer)
    # resumable state (live weights, AdamW, EMA, step, RNG, elapsed time), rewritten every checkpoint_every
    # steps; a run started again with the same state_path continues where the last one stopped
    state_path: str | None = None
    sample_prompts: list[str] = field(default_factory=list)  # the model card's sample grid (empty: none)
    sample_steps: int = 50
    guidance_scale: float = 4.0

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.batch_size < 1 or self.max_steps < 1 or self.threads < 1 or self.log_every < 1:
            raise ValueError("batch_size, max_steps, threads and log_every must be >= 1")
        if not (0 <= self.text_dropout < 1 and 0 <= self.alt_caption_prob <= 1):
            raise ValueError("text_dropout must be in [0, 1) and alt_caption_prob in [0, 1]")


@dataclass
class BackboneRecipe:
    data: RenderConfig = field(default_factory=RenderConfig)
    model: TinyIFConfig = field(default_factory=TinyIFConfig)
    train: BackboneTrainConfig = field(default_factory=BackboneTrainConfig)


def caption_table(views: RenderedViews, tokenizer) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Tokenize each distinct caption once: (ids (U+1, 77), mask, per-view rows); row 0 is the empty prompt."""
    rows: dict[str, int] = {"": 0}
    per_view = [[rows.setdefault(caption, len(rows)) for caption in captions] for captions in views.captions]
    ids, mask = tokenize(tokenizer, list(rows))
    return ids, mask, per_view


def pick_captions(per_view: list[list[int]], index: torch.Tensor, generator: torch.Generator,
                  alt_prob: float, drop_prob: float) -> torch.Tensor:
    """Caption rows for the views ``index``: the first caption, an alternative, or the empty prompt."""
    draws = torch.rand(len(index), 3, generator=generator)
    chosen = []
    for view, (alt, which, drop) in zip(index.tolist(), draws.tolist(), strict=True):
        options = per_view[view]
        row = options[1 + int(which * (len(options) - 1))] if alt < alt_prob and len(options) > 1 else options[0]
        chosen.append(0 if drop < drop_prob else row)
    return torch.tensor(chosen)


def diffusion_loss(unet, text_encoder, x0: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Per-sample ε-prediction MSE (B,) for clean images x0 (B, 3, H, W) at timesteps t (B,); text with gradients."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # as DDPMScheduler.add_noise
    text = encode_tokens(text_encoder, input_ids, attention_mask)  # (B, 77, D)
    pred = unet(x_t, t, encoder_hidden_states=text).sample
    return (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, γ) / SNR per sample (Min-SNR, Hang et al. 2023); all ones when γ <= 0.

    With ε-prediction the nearly clean timesteps have the largest loss but decide nothing about colour or
    shape; this weight keeps them from dominating the gradient.
    """
    if gamma <= 0:
        return torch.ones_like(alphas_cumprod_t)
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    return snr.clamp(max=gamma) / snr


def load_pipeline_weights(folder: str | Path, unet, text_encoder, tokenizer) -> None:
    """Copy a saved pipeline's UNet and text-encoder weights into freshly built parts of the same recipe.

    Continuing a run this way restarts AdamW and the LR schedule; the weights (an EMA when saved by this
    recipe) are the starting point. A folder from another architecture or vocabulary is refused.
    """
    from safetensors.torch import load_file

    root = Path(folder)
    saved_vocab = root / "tokenizer" / "tokenizer.json"
    if not saved_vocab.is_file():
        raise ValueError(f"{root}: init_from is not a pipeline folder (no tokenizer/tokenizer.json)")
    vocab = json.loads(saved_vocab.read_text())["model"]["vocab"]
    if vocab != tokenizer.get_vocab():
        raise ValueError(f"{saved_vocab}: vocabulary differs from this recipe's tokenizer")
    for part, module in (("unet", unet), ("text_encoder", text_encoder)):
        files = sorted((root / part).glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"{root / part}: expected one .safetensors file, found {len(files)}")
        state, own = load_file(str(files[0])), module.state_dict()
        # T5 saves its tied embedding once, under "shared"; encoder.embed_tokens may be absent
        missing = [name for name in own if name not in state and not name.endswith("embed_tokens.weight")]
        unexpected = [name for name in state if name not in own]
        wrong = [name for name, value in state.items() if name in own and own[name].shape != value.shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{files[0]}: does not match this recipe's {part} "
                             f"(missing {len(missing)}, unexpected {len(unexpected)}, wrong shape {len(wrong)})")
        module.load_state_dict(state, strict=False)


def save_train_state(path: Path, step: int, elapsed: float, losses: list[float], unet, text_encoder,
                     optimizer, ema, generator: torch.Generator) -> None:
    """Everything a killed run needs to continue bit-for-bit: written to a side file, then swapped in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(step=step, elapsed=elapsed, losses=losses[-200:], unet=unet.state_dict(),
                 text_encoder=text_encoder.state_dict(), optimizer=optimizer.state_dict(), ema=ema.state_dict(),
                 generator=generator.get_state())
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_train_state(path: Path, unet, text_encoder, optimizer, ema, generator: torch.Generator):
    """Restore ``save_train_state``'s file in place; returns (step, elapsed seconds, recent losses)."""
    state = torch.load(path, weights_only=False, map_location="cpu")
    unet.load_state_dict(state["unet"])
    text_encoder.load_state_dict(state["text_encoder"])
    optimizer.load_state_dict(state["optimizer"])
    ema.load_state_dict(state["ema"])
    generator.set_state(state["generator"])
    return state["step"], state["elapsed"], list(state["losses"])


def train_backbone(recipe: BackboneRecipe, out: str | None = None, progress: bool = True) -> dict:
    """Render (or load) the views, train, save the pipeline and figures into ``out``; returns the summary."""
    cfg = recipe.train
    out_dir = Path(out or cfg.out)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    autocast = torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext()

    views = render_views(recipe.data, progress=progress)
    unet, text_encoder, tokenizer, scheduler = build_parts(recipe.model, cfg.seed)
    if cfg.init_from:
        load_pipeline_weights(cfg.init_from, unet, text_encoder, tokenizer)
    ids, mask, per_view = caption_table(views, tokenizer)
    images = views.images.to(device)  # (N, 3, H, W) uint8: the whole set fits in memory
    ids, mask = ids.to(device), mask.to(device)
    alphas = scheduler.alphas_cumprod.to(device)
    unet.to(device).train()
    text_encoder.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = EMAModel(params, decay=cfg.ema_max_decay, use_ema_warmup=True, power=cfg.ema_power)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, elapsed_before, losses = 0, 0.0, []
    state_path = Path(cfg.state_path) if cfg.state_path else None
    if state_path is not None and state_path.is_file():
        step, elapsed_before, losses = load_train_state(state_path, unet, text_encoder, optimizer, ema, generator)
        if progress:
            print(f"resuming {state_path} at step {step}", flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "loss.csv"
    log = open(log_path, "a" if step else "w", newline="")  # noqa: SIM115 (closed in the finally below)
    writer = csv.writer(log)
    if not step:
        writer.writerow(["step", "loss", "lr", "elapsed_s"])

    def checkpoint() -> None:  # the EMA weights, written to a side folder and then swapped in
        ema.store(params)
        ema.copy_to(params)
        tmp = out_dir.with_name(out_dir.name + ".partial")
        save_pipeline(tmp, unet, text_encoder, tokenizer, scheduler)
        ema.restore(params)
        for child in tmp.iterdir():
            target = out_dir / child.name
            if target.is_dir():
                shutil.rmtree(target)
            child.replace(target)
        tmp.rmdir()
        if state_path is not None:
            save_train_state(state_path, step, time.perf_counter() - start, losses, unet, text_encoder,
                             optimizer, ema, generator)

    start, window = time.perf_counter() - elapsed_before, []
    try:
        while step < cfg.max_steps:
            elapsed = time.perf_counter() - start
            if elapsed > cfg.max_minutes * 60:
                break
            progress_frac = min(1.0, max(step / cfg.max_steps, elapsed / (cfg.max_minutes * 60)))
            lr = cfg.learning_rate * min(1.0, (step + 1) / max(cfg.warmup_steps, 1)) * (
                cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress_frac)))
            for group in optimizer.param_groups:
                group["lr"] = lr

            index = torch.randint(len(images), (cfg.batch_size,), generator=generator)
            rows = pick_captions(per_view, index, generator, cfg.alt_caption_prob, cfg.text_dropout).to(device)
            x0 = images[index.to(device)].float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
            noise = torch.randn(x0.shape, generator=generator).to(device)
            t = torch.randint(scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=generator).to(device)
            with autocast:
                mse = diffusion_loss(unet, text_encoder, x0, ids[rows], mask[rows], t, noise, alphas)
            loss = (mse * min_snr_weights(alphas[t], cfg.snr_gamma)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            ema.step(params)
            step += 1
            window.append(mse.mean().item())  # logged unweighted, so runs with other weightings compare
            losses.append(window[-1])
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                mean = sum(window) / len(window)
                writer.writerow([step, f"{mean:.6f}", f"{lr:.3e}", f"{time.perf_counter() - start:.1f}"])
                log.flush()
                if progress:
                    print(f"step {step} loss {mean:.4f} lr {lr:.2e} {time.perf_counter() - start:.0f}s", flush=True)
                window = []
            if step % cfg.checkpoint_every == 0:
                checkpoint()
    finally:
        log.close()
    wall = time.perf_counter() - start
    checkpoint()
    tail = losses[-200:]
    summary = dict(
        out=str(out_dir), steps=step, batch_size=cfg.batch_size, wall_seconds=round(wall, 1), device=str(device),
        precision="bf16" if bf16 else "fp32", threads=cfg.threads,
        final_loss_mean_last_200=round(sum(tail) / max(len(tail), 1), 5), num_views=len(views),
        render_seconds=round(views.seconds, 1), unet_parameters=count_parameters(unet),
        text_encoder_parameters=count_parameters(text_encoder), vocabulary=len(tokenizer),
        recipe=json.loads(json.dumps(asdict(recipe))),
    )
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1))
    from tunemv.tinyif.model_card import write_backbone_figures  # loads the saved model back

    write_backbone_figures(out_dir, cfg.sample_prompts, cfg.sample_steps, cfg.guidance_scale)
    return summary


def train_backbone_from_file(path: str, out: str | None = None, device: str | None = None,
                             threads: int | None = None, progress: bool = True) -> dict:
    overrides = {key: value for key, value in (("train.device", device), ("train.threads", threads)) if value is not None}
    return train_backbone(load_config(path, BackboneRecipe, overrides), out=out, progress=progress)
