"""The "one-step" sampler: x̂0 of one guided "mv" evaluation at t_G, through the pipeline and the registry."""

from __future__ import annotations

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from sampling_fixtures import PROMPT, adapter_pipeline, save_backbones

from tunemv.sampling import registry
from tunemv.sampling.algebra import to_epsilon
from tunemv.sampling.one_step import OneStepSampler, one_step_timestep
from tunemv.sampling.pipeline import initial_noise

VIEWS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module", params=["sd", "if"])
def pipe(folders, request):
    return adapter_pipeline(folders[request.param], awake=True)


def test_generator_timestep_is_the_noisiest_with_enough_signal():
    alphas = torch.linspace(0.999, 1e-9, 1000)
    t = one_step_timestep(alphas, 0.005)
    assert alphas[t] >= 0.005 > alphas[t + 1]
    with pytest.raises(ValueError, match="min_alpha_bar"):
        OneStepSampler(min_alpha_bar=0.0)
    with pytest.raises(ValueError, match="timestep"):
        OneStepSampler(timestep=-1)


def test_one_step_is_registered():
    assert isinstance(registry.get_sampler("one-step")(), OneStepSampler)


def test_one_step_is_the_x0_of_one_guided_mv_prediction(pipe):
    """The views are (z − √(1−ᾱ)·ε_cfg) / √ᾱ at t_G for the pipeline's own noise, computed here by hand."""
    out = pipe(PROMPT, num_views=VIEWS, sampler="one-step", guidance_scale=3.0, seed=4, progress=False)
    backbone, denoiser = pipe.backbone, pipe.denoiser
    alphas = backbone.noise_scheduler.alphas_cumprod
    t = one_step_timestep(alphas)
    size = backbone.sample_size
    noise = randn_tensor((VIEWS, backbone.in_channels, size, size), generator=torch.Generator().manual_seed(4),
                         dtype=torch.float32)
    z = rearrange(noise, "(b v) c h w -> b v c h w", b=1)
    timesteps = torch.full((1, VIEWS), t)
    denoiser.eval()  # as the pipeline samples: NeuS's rays unjittered
    with torch.no_grad():
        text, uncond = backbone.encode_prompt([PROMPT]).float(), backbone.encode_prompt([""]).float()
        pred = denoiser.predict(z, timesteps, out.cameras.rescale(size, size), text, ("mv",), uncond)
    eps = lambda p: to_epsilon(p, z, timesteps, alphas, backbone.prediction_type)  # noqa: E731
    epsilon = eps(pred.uncond["mv"]) + 3.0 * (eps(pred.cond["mv"]) - eps(pred.uncond["mv"]))
    a = alphas[t]
    x0 = (z - (1 - a).sqrt() * epsilon) / a.sqrt()
    if backbone.vae is None:
        x0 = x0.clamp(-1, 1)
    torch.testing.assert_close(out.latents, x0, rtol=1e-4, atol=1e-4)
    # Calibration: another timestep gives other views, so the comparison can fail.
    other = pipe(PROMPT, num_views=VIEWS, sampler="one-step", sampler_options={"timestep": t - 100},
                 guidance_scale=3.0, seed=4, progress=False)
    assert (other.latents - x0).abs().max() > 1e-2


def test_one_step_keeps_references_and_is_deterministic(pipe):
    size = pipe.backbone.image_resolution
    reference = torch.rand(1, 3, size, size)
    runs = [pipe(PROMPT, num_views=VIEWS, sampler="one-step", reference_images=reference, seed=1, progress=False)
            for _ in range(2)]
    assert torch.equal(runs[0].pixels, runs[1].pixels)
    assert torch.equal(runs[0].pixels[0, 0], reference[0])
    assert runs[0].references[0].tolist() == [True, False, False]


def test_one_step_views_are_a_function_of_the_seed(pipe):
    runs = {seed: pipe(PROMPT, num_views=VIEWS, sampler="one-step", seed=seed, progress=False).latents
            for seed in (0, 0, 1)}
    again = pipe(PROMPT, num_views=VIEWS, sampler="one-step", seed=0, progress=False).latents
    assert torch.equal(runs[0], again)
    assert (runs[0] - runs[1]).abs().max() > 1e-2
    # The seed acts only through x_T: the pipeline's own noise for seed 1, passed as latents=, gives seed 1's views.
    noise = initial_noise(pipe.backbone, 1, VIEWS, torch.Generator().manual_seed(1))
    from_latents = pipe(PROMPT, num_views=VIEWS, sampler="one-step", seed=0, latents=noise, progress=False).latents
    assert torch.equal(from_latents, runs[1])
