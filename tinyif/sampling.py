"""A short text-to-image sampling loop for a pixel-space ``Backbone``, with classifier-free guidance.

The default step rule is DDPM, the ancestral sampler IF itself ships with. On ``models/tiny-if`` deterministic
DDIM at CFG 4 draws noisy, tinted, mostly legged shapes whatever the prompt (category match 0.14), while DDPM
at the same CFG draws the prompted category (see the model card): DDIM's errors at high guidance accumulate
on a small pixel model, and DDPM's fresh noise each step washes them out.

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
    for t in rule.timesteps:
        out = backbone.unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample
        eps_uncond, eps_cond = backbone.split_prediction(out).chunk(2)
        eps = classifier_free(eps_cond, eps_uncond, guidance_scale)
        x = rule.step(eps, t, x, generator=generator).prev_sample
    return (x.float().clamp(-1, 1) + 1) / 2

