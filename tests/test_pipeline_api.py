"""The diffusers-style call: output types, seeds, callback_on_step_end, the progress bar and deprecations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sampling_fixtures import PROMPT, adapter_pipeline, save_backbones

VIEWS, STEPS = 2, 3


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folders = save_backbones(tmp_path_factory.mktemp("api"))
    return adapter_pipeline(folders["if"], awake=True)


def call(pipe, **kwargs):
    return pipe(PROMPT, num_views=VIEWS, steps=STEPS, progress=False, **{"seed": 0, **kwargs})


def test_output_types_carry_the_same_pixels(pipe):
    pt, np_out, pil = (call(pipe, output_type=kind) for kind in ("pt", "np", "pil"))
    assert pt.images.shape == (1, VIEWS, 3, 16, 16) and torch.equal(pt.images, pt.pixels)
    assert np_out.images.shape == (1, VIEWS, 16, 16, 3)
    np.testing.assert_allclose(np_out.images, pt.images.permute(0, 1, 3, 4, 2).numpy())
    assert len(pil.images) == 1 and len(pil.images[0]) == VIEWS and isinstance(pil.images[0][0], Image.Image)
    assert np.abs(np.asarray(pil.images[0][1]) / 255 - np_out.images[0, 1]).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="output_type"):
        call(pipe, output_type="latent")


def test_no_seed_means_a_random_seed_that_is_reported_and_reproduces(pipe):
    first, second = call(pipe, seed=None), call(pipe, seed=None)
    assert first.seed != second.seed and not torch.equal(first.latents, second.latents)
    again = call(pipe, seed=first.seed)
    assert again.seed == first.seed and torch.equal(again.latents, first.latents)
    assert call(pipe, generator=torch.Generator().manual_seed(1), seed=None).seed is None


def test_callback_on_step_end_sees_every_step_and_may_replace_the_latents(pipe):
    seen = []

    def record(caller, step, t, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        assert caller is pipe

    call(pipe, callback_on_step_end=record)
    assert [step for step, _ in seen] == list(range(STEPS)) and seen[0][1] == (1, VIEWS, 3, 16, 16)
    zeroed = call(pipe, callback_on_step_end=lambda caller, step, t, tensors:
                  {"latents": torch.zeros_like(tensors["latents"])} if step == STEPS - 1 else None)
    assert torch.equal(zeroed.latents, torch.zeros_like(zeroed.latents))


@pytest.mark.parametrize(("scheduler", "tolerance"), [("euler", 1e-5), ("ddim", 0.02)])
def test_the_step_callback_carries_the_clean_views_each_step_points_at(pipe, scheduler, tolerance):
    """``denoised`` is x̂0 (k-diffusion's callback): it closes on the result as the steps go, and Euler's last
    step lands on it exactly (DDIM's too, up to the pixel clip its step applies to x̂0)."""
    seen = []
    out = call(pipe, scheduler=scheduler, output_type="pt",
               callback_on_step_end=lambda caller, step, t, tensors: seen.append(tensors["denoised"].clone()))
    distances = [float((denoised - out.latents).abs().mean()) for denoised in seen]
    assert len(seen) == STEPS and seen[0].shape == out.latents.shape
    assert distances == sorted(distances, reverse=True) and distances[-1] < tolerance < distances[0]


def test_the_progress_bar_is_configurable(pipe, capsys):
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, num_views=VIEWS, steps=STEPS, seed=0)
    assert capsys.readouterr().err == ""
    pipe.set_progress_bar_config(desc="denoising")
    pipe(PROMPT, num_views=VIEWS, steps=STEPS, seed=0)
    assert "denoising" in capsys.readouterr().err
    pipe.set_progress_bar_config()


def test_the_old_names_still_work_with_a_deprecation_warning(pipe):
    steps = []
    with pytest.warns(FutureWarning, match="callback_on_step_end"):
        out = call(pipe, callback=lambda step, t, latents: steps.append(step))
    assert steps == list(range(STEPS))
    with pytest.warns(FutureWarning, match=r"\.views is deprecated"):
        views = out.views
    assert torch.equal(views, out.pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert call(pipe).pixels.shape[1] == VIEWS  # the new names warn about nothing


def test_what_a_diffusers_user_types_works(pipe):
    """num_inference_steps= (diffusers' steps=), return_dict=False and height=/width= of the size it makes."""
    named = pipe(PROMPT, num_views=VIEWS, num_inference_steps=STEPS, seed=0, progress=False, output_type="pt")
    assert torch.equal(named.images, call(pipe, output_type="pt").images) and named.run["steps"] == STEPS
    with pytest.raises(ValueError, match="steps=2 and num_inference_steps=3 disagree"):
        pipe(PROMPT, num_views=VIEWS, steps=2, num_inference_steps=3, progress=False)
    as_tuple = call(pipe, output_type="pt", return_dict=False, height=16, width=16)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], named.images)
    with pytest.raises(ValueError, match=r"^height=512, width=512: backbone .* makes 16x16 views only; pass "
                                         r"height=16, width=16 or leave them out$"):
        call(pipe, height=512, width=512)


def test_model_cpu_offload_gives_the_same_views(tmp_path):
    """On this CPU machine the execution device is the CPU: what is tested is that the hooks wrap the frozen
    parts and sampling through them gives the same result."""
    pytest.importorskip("accelerate")
    folders = save_backbones(tmp_path)
    plain, offloaded = adapter_pipeline(folders["sd"], awake=True), adapter_pipeline(folders["sd"], awake=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert hasattr(offloaded.backbone.unet, "_hf_hook")
    torch.testing.assert_close(call(offloaded, output_type="pt").latents, call(plain, output_type="pt").latents)
    if not torch.cuda.is_available():
        from tunemv.errors import TunemvError

        with pytest.raises(TunemvError, match="no cuda"):
            plain.enable_model_cpu_offload()


def test_the_pipeline_writes_nothing_unless_asked_and_save_writes_object_folders(pipe, tmp_path, monkeypatch):
    from tunemv.data.check import check_dataset

    monkeypatch.chdir(tmp_path)
    out = call(pipe, output_type="pt")
    assert list(tmp_path.iterdir()) == []  # a call writes nothing
    (folder,) = out.save(tmp_path / "out", turntable_frames=2)
    assert folder.name == "0000_a-red-chair" and (folder / "turntable.gif").is_file()
    assert check_dataset(tmp_path / "out").ok
    with pytest.raises(TypeError):
        out.save(tmp_path / "other", no_such_option=1)
