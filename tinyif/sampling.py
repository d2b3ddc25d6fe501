"""A short text-to-image sampling loop for a pixel-space ``Backbone``, with classifier-free guidance.

The default step rule is DDPM, the ancestral sampler IF itself ships with. Any diffusers rule works; DDIM
steps recompute ε from the clipped x̂0 (``sampling.job.step_arguments``), without which deterministic DDIM
on ``models/tiny-if`` drew tinted blobs whatever the prompt (see the model card).

Used for the model card's sample grid, the fidelity experiments and the tests; the multiview samplers (whose
``denoise`` loop needs cameras and views) live in ``tunemv.sampling``, whose CFG rule this reuses.
IFPipeline itself also works on the saved folder, but it needs the Backbone's prompt handling to match
training exactly, so this loop encodes prompts through ``Backbone.encode_prompt``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def sample_images(backbone, prompts: Sequence[str], steps: int = 50, guidance_scale: float = 4.0,
                  generator: torch.Generator | None = None, scheduler: str = "ddpm") -> torch.Tensor:
    """Prompts -> (N, 3, H, W) images in [0, 1] from a pixel-space (IF-family) backbone."""
    from tunemv.sampling.denoising_loop import step_arguments
    from tunemv.sampling.guidance import classifier_free
    from tunemv.sampling.schedulers import make_scheduler

    if backbone.family != "if":
        raise ValueError(f"sample_images needs a pixel-space IF-family backbone, got family {backbone.family!r}")
    rule = make_scheduler(scheduler, backbone.scheduler_config, clip_sample=True)
    rule.set_timesteps(steps, device=backbone.device)
    count, size = len(prompts), backbone.sample_size
    cond = backbone.encode_prompt(list(prompts)).hidden_states  # (N, L, D)
    uncond = backbone.encode_prompt([""] * count).hidden_states
    text = torch.cat([uncond, cond])  # "(2 n) l d": both CFG branches in one UNet call
    x = torch.randn(count, 3, size, size, generator=generator, device="cpu").to(backbone.device, backbone.dtype)
    x = x * rule.init_noise_sigma  # 1 for DDPM and DDIM; σ_max for Euler-type rules
    step_kwargs = step_arguments(rule, 0.0, generator, pixel_space=True)
    for t in rule.timesteps:
        model_input = rule.scale_model_input(x, t)
        out = backbone.unet(torch.cat([model_input, model_input]), t, encoder_hidden_states=text).sample
        eps_uncond, eps_cond = backbone.split_prediction(out).chunk(2)
        eps = classifier_free(eps_cond, eps_uncond, guidance_scale)
        x = rule.step(eps, t, x, **step_kwargs).prev_sample
    return (x.float().clamp(-1, 1) + 1) / 2

