"""A frozen diffusers text-to-image backbone (SD 1.x/2.x, SDXL, DeepFloyd-IF stage I) behind one interface.

``Backbone`` holds the UNet, the VAE (none for pixel-space IF), the text encoder(s) and the scheduler config
of one pipeline, loaded with diffusers' and transformers' own ``from_pretrained`` from a hub id or a local
folder in the diffusers pipeline layout (``model_index.json`` + ``unet/``, ``vae/``, ``text_encoder/`` ...).
Everything is frozen and stays in eval mode. It maps views to model space and back and encodes prompts
(cached, so the empty CFG prompt is encoded once). Predictions stay in the backbone's own
parameterisation (``prediction_type``; IF's learned-variance half is cut off by ``split_prediction``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from einops import rearrange
from packaging.version import Version
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

from tunemv.adapters.text import Text
from tunemv.errors import TunemvError

FAMILIES = ("sd", "sdxl", "if")
# model_index.json `_class_name` prefix -> family; the most specific prefix first.
_PIPELINE_PREFIXES = (("StableDiffusionXL", "sdxl"), ("StableDiffusion", "sd"), ("IF", "if"))
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_DEFAULT_MAX_LENGTH = 77  # CLIP's context; IFPipeline.encode_prompt also hard-codes 77 T5 tokens
# transformers 4.56 renamed `torch_dtype` to `dtype` and v5 warns on the old name.
_DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class ModelError(TunemvError, ValueError):
    """A backbone that cannot be loaded or does not fit together; the message starts with its path."""


class Backbone(torch.nn.Module):
    """A frozen text-to-image diffusion model: UNet, VAE (SD, SDXL), text encoder(s) and noise schedule.

    Args:
        unet, text_encoder, tokenizer: the pipeline's components.
        scheduler_config: the pipeline's scheduler config; ``noise_scheduler`` is a ``DDPMScheduler`` from it.
        vae: the ``AutoencoderKL`` of latent models, ``None`` for pixel-space IF.
        text_encoder_2, tokenizer_2: SDXL's second (projecting) CLIP text encoder.
        family: "sd", "sdxl" or "if"; inferred from the components when ``None``.
        name_or_path: where the model came from, for error messages.
        vae_chunk: views per VAE call in ``encode_views``/``decode_views`` (bounds activation memory).
        prompt_cache_size: prompts whose embeddings are kept (least recently used dropped first).
        force_zeros_for_empty_prompt: SDXL only: the empty prompt embeds as zeros, as SDXL was trained.
    """

    def __init__(self, unet: UNet2DConditionModel, text_encoder: torch.nn.Module, tokenizer: Any,
                 scheduler_config: dict[str, Any], vae: AutoencoderKL | None = None,
                 text_encoder_2: torch.nn.Module | None = None, tokenizer_2: Any = None, *,
                 family: str | None = None, name_or_path: str = "backbone", vae_chunk: int = 8,
                 prompt_cache_size: int = 1024, force_zeros_for_empty_prompt: bool = True):
        super().__init__()
        if family is None:
            family = "if" if vae is None else "sdxl" if text_encoder_2 is not None else "sd"
        self.family, self.name_or_path = family, str(name_or_path)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.scheduler_config = dict(scheduler_config)
        self.vae_chunk, self.prompt_cache_size = vae_chunk, prompt_cache_size
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self._check()
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._background: torch.Tensor | None = None
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, family: str | None = None,
                        torch_dtype: torch.dtype | str | None = None, revision: str | None = None,
                        variant: str | None = None, device: torch.device | str | None = None,
                        **options) -> Backbone:
        """Load a diffusers pipeline's parts from a hub id or a local folder; ``options`` go to ``__init__``."""
        path = str(name_or_path)
        if not path.strip():
            raise ModelError("the backbone's name is empty; name a hub id (owner/name) or a pipeline folder")
        local = looks_local(path)
        if local and Path(path).is_file():
            raise ModelError(f"{path}: is a file; a backbone is a hub id (owner/name) or a diffusers pipeline "
                             "folder (model_index.json, unet/, ...)")
        if local and not Path(path).is_dir():
            raise ModelError(f"{path}: no such folder")
        if isinstance(torch_dtype, str):
            torch_dtype = getattr(torch, torch_dtype.removeprefix("torch."), torch_dtype)
        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise ModelError(f"{path}: unknown torch_dtype {torch_dtype!r}")
        model_index = _model_index(path, local, revision)
        family = family or _detect_family(path, model_index, local)
        if family not in FAMILIES:
            raise ModelError(f"{path}: unknown backbone family {family!r}; expected one of {', '.join(FAMILIES)}")
        weights = dict(revision=revision, variant=variant)
        text_dtype = {_DTYPE_KWARG: torch_dtype}
        parts: dict[str, Any] = dict(
            unet=_load(UNet2DConditionModel, path, local, "unet", torch_dtype=torch_dtype, **weights),
            text_encoder=_load(T5EncoderModel if family == "if" else CLIPTextModel, path, local, "text_encoder",
                               **text_dtype, **weights),
            tokenizer=_load(AutoTokenizer, path, local, "tokenizer", revision=revision),
            scheduler_config=_load(DDPMScheduler, path, local, "scheduler", revision=revision, method="load_config"),
        )
        if family != "if":
            # fp16 VAEs overflow; diffusers upcasts those marked `force_upcast`, so they are kept in fp32 here.
            fp16 = torch_dtype == torch.float16
            vae = _load(AutoencoderKL, path, local, "vae", torch_dtype=None if fp16 else torch_dtype, **weights)
            parts["vae"] = vae.to(torch.float32 if vae.config.force_upcast else torch.float16) if fp16 else vae
        if family == "sdxl":
            parts["text_encoder_2"] = _load(CLIPTextModelWithProjection, path, local, "text_encoder_2",
                                            **text_dtype, **weights)
            parts["tokenizer_2"] = _load(AutoTokenizer, path, local, "tokenizer_2", revision=revision)
            options.setdefault("force_zeros_for_empty_prompt", model_index.get("force_zeros_for_empty_prompt", True))
        backbone = cls(**parts, family=family, name_or_path=path, **options)
        return backbone if device is None else backbone.to(device)

    # ---- what the model is -------------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def prediction_channels(self) -> int:
        """Channels of the prediction proper: IF's UNet also outputs a learned-variance half."""
        learned = self.scheduler_config.get("variance_type") in ("learned", "learned_range")
        return self.unet.config.out_channels // 2 if learned else self.unet.config.out_channels

    @property
    def sample_size(self) -> int:
        """The UNet's training resolution in its own space (latents for SD/SDXL, pixels for IF)."""
        return self.unet.config.sample_size

    @property
    def vae_scale_factor(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_resolution(self) -> int:
        return self.sample_size * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        # Under model CPU offload (MultiviewPipeline.enable_model_cpu_offload) the weights wait on the CPU
        # and hop to the execution device for each forward; inputs are made there.
        return getattr(self, "execution_device", None) or self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: a parent module's .train() must not switch on dropout here.
        return super().train(False)

    def _apply(self, fn, recurse=True):
        # .to()/.half() move the parameters; cached embeddings would keep the old device and dtype.
        self.clear_prompt_cache()
        self._background = None
        return super()._apply(fn, recurse)

    def split_prediction(self, unet_output: torch.Tensor) -> torch.Tensor:
        """(..., C_out, h, w) -> (..., prediction_channels, h, w): drop IF's learned-variance half."""
        return unet_output.narrow(-3, 0, self.prediction_channels)

    # ---- prompts -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str],
                      image_size: tuple[int, int] | None = None) -> Text:
        """Text embeddings in the UNet's dtype and device, each distinct prompt encoded once (cached).

        ``image_size`` (H, W) is SDXL's micro-conditioning (original and target size); default: the
        training resolution.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("encode_prompt needs at least one prompt")
        found = {}
        for prompt in dict.fromkeys(prompts):
            if prompt in self._prompt_cache:
                self._prompt_cache.move_to_end(prompt)
                found[prompt] = self._prompt_cache[prompt]
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in found]
        if missing:
            with self._own_precision():
                hidden, pooled = self._encode_text(missing)
            for index, prompt in enumerate(missing):
                found[prompt] = self._prompt_cache[prompt] = (hidden[index], None if pooled is None else pooled[index])
            while len(self._prompt_cache) > self.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        to_unet = dict(device=self.device, dtype=self.dtype)
        hidden_states = torch.stack([found[prompt][0] for prompt in prompts]).to(**to_unet)
        if self.family != "sdxl":
            return Text(hidden_states)
        height, width = image_size or (self.image_resolution, self.image_resolution)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], **to_unet)  # original, crop, target
        text_embeds = torch.stack([found[prompt][1] for prompt in prompts]).to(**to_unet)
        return Text(hidden_states, {"text_embeds": text_embeds, "time_ids": time_ids.repeat(len(prompts), 1)})

    def clear_prompt_cache(self) -> None:
        self._prompt_cache.clear()

    def _own_precision(self):
        """Autocast off: the text encoders and the VAE run in their own dtype. Cached embeddings must not
        depend on whether the first call came under a trainer's autocast, and CPU autocast runs LayerNorm
        in fp32 against half-precision weights ("mixed dtype (CPU)")."""
        return torch.autocast(self.device.type, enabled=False)

    def _tokenize(self, tokenizer, prompts: list[str]):
        max_length = _DEFAULT_MAX_LENGTH if self.family == "if" else tokenizer.model_max_length
        if max_length > 100_000:  # tokenizers saved without a length report int(1e30)
            max_length = _DEFAULT_MAX_LENGTH
        return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")

    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As the diffusers pipelines do: last hidden state (SD, IF) or both penultimate ones (SDXL)."""
        if self.family == "if":  # IFPipeline's preprocessing without its optional bs4/ftfy caption cleaning
            prompts = [prompt.lower().strip() for prompt in prompts]
        if self.family != "sdxl":
            tokens = self._tokenize(self.tokenizer, prompts)
            use_mask = self.family == "if" or getattr(self.text_encoder.config, "use_attention_mask", False)
            mask = tokens.attention_mask.to(self.text_encoder.device) if use_mask else None
            return self.text_encoder(tokens.input_ids.to(self.text_encoder.device), attention_mask=mask)[0], None
        states = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(self._tokenize(tokenizer, prompts).input_ids.to(encoder.device), output_hidden_states=True)
            states.append(output.hidden_states[-2])
        hidden, pooled = torch.cat(states, dim=-1), output.text_embeds  # pooled: the projecting encoder's
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([prompt == "" for prompt in prompts], device=hidden.device)
            hidden, pooled = hidden.masked_fill(empty[:, None, None], 0), pooled.masked_fill(empty[:, None], 0)
        return hidden, pooled

    # ---- views <-> model space ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_views(self, images: torch.Tensor, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, V, 3, H, W) in [-1, 1] -> (B, V, C, H/f, W/f) scaled latents; the identity for pixel-space IF.

        The VAE posterior's mean is used unless ``sample``; the result keeps the images' dtype.
        """
        _check_views(images, 3, "images")
        if self.vae is None:
            return images
        flat = rearrange(images, "b v c h w -> (b v) c h w").to(self.vae.device, self.vae.dtype)
        latents = []
        with self._own_precision():
            for chunk in flat.split(self.vae_chunk):
                posterior = self.vae.encode(chunk).latent_dist
                latents.append(posterior.sample(generator) if sample else posterior.mean)
        shift, scale = self._latent_shift_scale()
        latents = (torch.cat(latents) - shift) * scale
        return rearrange(latents, "(b v) c h w -> b v c h w", b=images.shape[0]).to(images.dtype)

    @torch.no_grad()
    def decode_views(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, V, C, h, w) scaled latents -> (B, V, 3, h*f, w*f) images, about [-1, 1] (not clamped)."""
        _check_views(latents, self.in_channels, "latents")
        if self.vae is None:
            return latents
        shift, scale = self._latent_shift_scale()
        flat = rearrange(latents, "b v c h w -> (b v) c h w").to(self.vae.device, self.vae.dtype) / scale + shift
        with self._own_precision():
            images = torch.cat([self.vae.decode(chunk).sample for chunk in flat.split(self.vae_chunk)])
        return rearrange(images, "(b v) c h w -> b v c h w", b=latents.shape[0]).to(latents.dtype)

    def _latent_shift_scale(self) -> tuple[float, float]:
        return self.vae.config.get("shift_factor") or 0.0, self.vae.config.scaling_factor

    @property
    def background_latent(self) -> torch.Tensor:
        """(C,) "white" in model space: white pixels (1.0) for IF, else the VAE encoding of a white image.

        The VAE's receptive field (and its mid-block attention) makes the latents of a white image vary near
        its border and slightly with its size, so this is the median over the central half of a white image at
        the training resolution: the white that backgrounds of training views encode to.
        """
        if self._background is None:
            if self.vae is None:
                self._background = torch.ones(self.in_channels, device=self.device)
            else:
                size = self.image_resolution
                latents = self.encode_views(torch.ones(1, 1, 3, size, size, device=self.vae.device))[0, 0]
                h, w = latents.shape[-2:]
                centre = latents[:, h // 4: h - h // 4, w // 4: w - w // 4]
                self._background = centre.flatten(1).median(dim=1).values
        return self._background

    # ---- consistency -------------------------------------------------------------------------------------
    def _check(self) -> None:
        """Raise a one-line ``ModelError`` when the parts do not fit together."""
        def fail(problem: str):
            raise ModelError(f"{self.name_or_path}: {problem}")

        config = self.unet.config
        if self.family not in FAMILIES:
            fail(f"unknown backbone family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        if (self.vae is None) != (self.family == "if"):
            fail(f"family {self.family!r} {'takes no' if self.family == 'if' else 'needs a'} VAE")
        if (self.text_encoder_2 is None) != (self.family != "sdxl"):
            fail(f"family {self.family!r} {'needs' if self.family == 'sdxl' else 'takes no'} a second text encoder")
        if self.prediction_type not in _PREDICTION_TYPES:
            fail(f"scheduler prediction_type {self.prediction_type!r} is not one of {', '.join(_PREDICTION_TYPES)}")
        if self.vae is not None and config.in_channels != self.vae.config.latent_channels:
            fail(f"UNet in_channels {config.in_channels} != VAE latent_channels {self.vae.config.latent_channels}")
        if self.vae is None and config.in_channels != 3:
            fail(f"a pixel-space UNet needs 3 input channels, got {config.in_channels}")
        if self.prediction_channels != config.in_channels:
            fail(f"UNet predicts {self.prediction_channels} channels for {config.in_channels} input channels "
                 "(inpainting and super-resolution models are not text-to-image backbones)")
        text_width = self.text_encoder.config.hidden_size
        if self.text_encoder_2 is not None:
            text_width += self.text_encoder_2.config.hidden_size
        unet_width = config.encoder_hid_dim if config.encoder_hid_dim is not None else config.cross_attention_dim
        unet_widths = {unet_width} if isinstance(unet_width, int) else set(unet_width)  # per-block widths
        if unet_widths != {text_width}:
            fail(f"text encoder width {text_width} does not match the UNet's text input width {unet_width}")
        if self.family == "sdxl":
            if config.addition_embed_type != "text_time":
                fail(f"an SDXL UNet has addition_embed_type 'text_time', got {config.addition_embed_type!r}")
            added = 6 * config.addition_time_embed_dim + self.text_encoder_2.config.projection_dim
            expected = self.unet.add_embedding.linear_1.in_features
            if added != expected:
                fail(f"UNet expects {expected} added-embedding inputs, the time ids and pooled text give {added}")


def _check_views(x: torch.Tensor, channels: int, name: str) -> None:
    if x.ndim != 5 or x.shape[2] != channels:
        raise ValueError(f"{name} must be (B, V, {channels}, H, W), got {tuple(x.shape)}")


def looks_local(path: str) -> bool:
    """A hub id is "owner/name"; anything else (absolute, relative with ./, nested) is a folder."""
    return Path(path).exists() or path.startswith((".", "~", "/")) or path.count("/") != 1


def _model_index(path: str, local: bool, revision: str | None) -> dict[str, Any]:
    if local and not (Path(path) / "model_index.json").is_file():
        return {}  # a bare folder of subfolders: the family comes from which subfolders exist
    try:
        return dict(DiffusionPipeline.load_config(path, revision=revision))
    except (OSError, ValueError) as error:
        unreadable = ModelError(f"{path}: cannot read model_index.json ({first_line(error)})")
        raise _unreachable(path, error) or unreadable from error


def _detect_family(path: str, model_index: dict[str, Any], local: bool) -> str:
    name = model_index.get("_class_name")
    if name is None and local:
        folder = Path(path)
        if not (folder / "unet").is_dir():
            raise ModelError(f"{path}: no model_index.json and no 'unet' subfolder; not a diffusers pipeline")
        return "sdxl" if (folder / "text_encoder_2").is_dir() else "sd" if (folder / "vae").is_dir() else "if"
    family = next((family for prefix, family in _PIPELINE_PREFIXES if str(name).startswith(prefix)), None)
    if family is None:
        raise ModelError(f"{path}: unknown pipeline class {name!r}; pass family= one of {', '.join(FAMILIES)}")
    return family


def _load(cls, path: str, local: bool, subfolder: str, method: str = "from_pretrained", **kwargs):
    if local and not (Path(path) / subfolder).is_dir():
        raise ModelError(f"{path}: no '{subfolder}' subfolder")
    try:
        return getattr(cls, method)(path, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as error:
        unreadable = ModelError(f"{path}: cannot load '{subfolder}' ({first_line(error)})")
        raise _unreachable(path, error) or unreadable from error


def _unreachable(path: str, error: BaseException) -> ModelError | None:
    """The Hub could not be reached (no network, or HF_HUB_OFFLINE=1) and the cache has no copy: diffusers
    reports that as the repository "does not appear to have a file named model_index.json", after retrying."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    causes = []
    while error is not None and len(causes) < 16:
        causes.append(error)
        error = error.__cause__ or error.__context__
    if not any(isinstance(cause, LocalEntryNotFoundError) for cause in causes):
        return None
    if constants.HF_HUB_OFFLINE:
        return ModelError(f"{path}: HF_HUB_OFFLINE=1 is set and the local Hub cache has no copy of it; download it "
                          "once online (HF_HUB_CACHE names the cache), or pass a local folder")
    return ModelError(f"{path}: the Hugging Face Hub could not be reached and the local Hub cache has no copy of it; "
                      "to work offline, download it once online and set HF_HUB_OFFLINE=1 (HF_HUB_CACHE names the "
                      "cache), or pass a local folder")


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
