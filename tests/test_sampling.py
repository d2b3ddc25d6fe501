"""Sampling: ε algebra, guidance pieces, samplers vs diffusers' own pipelines, zero-init, references, plugins."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import SimpleNamespace

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from sampling_fixtures import PROMPT, adapter_pipeline, save_adapter, save_backbones

from tunemv.adapters.backbones import Backbone, ModelError
from tunemv.sampling import registry
from tunemv.sampling.algebra import epsilon_to_sample, from_epsilon, to_epsilon
from tunemv.sampling.guidance import MixSchedule, classifier_free, consistency_guidance, consistency_steps
from tunemv.sampling.pipeline import AdapterError, MultiviewPipeline
from tunemv.sampling.schedulers import SCHEDULERS, SchedulerError, make_scheduler

STEPS = 2  # enough for multistep schedulers (DPM-Solver++) to use their history


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def zero_pipe(folders):
    return adapter_pipeline(folders["sd"])


@pytest.fixture(scope="module")
def awake_pipe(folders):
    return adapter_pipeline(folders["sd"], awake=True)


def run(pipe, **kwargs):
    options = {"num_views": 3, "steps": STEPS, "seed": 0, "progress": False, **kwargs}
    return pipe(PROMPT, **options)


def diffusers_latents(folder, scheduler: str, views: int = 3, steps: int = STEPS, seed: int = 0):
    """What diffusers' own StableDiffusionPipeline makes for the frozen backbone, per view."""
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    class_name, extra = SCHEDULERS[scheduler]  # built as a user would, in the backbone's own parameterisation
    pipeline.scheduler = getattr(diffusers, class_name).from_config(pipeline.scheduler.config, **extra)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipeline(PROMPT, num_images_per_prompt=views, num_inference_steps=steps, generator=generator,
                    output_type="latent", guidance_scale=7.5).images


# --------------------------------------------------------------------------------------------- algebra
@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_every_parameterisation_round_trips_through_epsilon(kind):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", prediction_type=kind)
    x0, noise = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    t = torch.randint(0, 1000, (2, 3))
    x_t = scheduler.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).unflatten(0, (2, 3))
    truth = scheduler.get_velocity(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).unflatten(0, (2, 3)) \
        if kind == "v_prediction" else x0
    epsilon = to_epsilon(truth, x_t, t, scheduler.alphas_cumprod, kind)
    torch.testing.assert_close(epsilon, noise, atol=2e-4, rtol=1e-4)  # the true noise comes back
    torch.testing.assert_close(from_epsilon(epsilon, x_t, t, scheduler.alphas_cumprod, kind), truth,
                               atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(epsilon_to_sample(noise, x_t, t, scheduler.alphas_cumprod), x0, atol=2e-3, rtol=1e-3)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        to_epsilon(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1), torch.ones(10), "flow")


# -------------------------------------------------------------------------------------------- guidance
def test_consistency_guidance_is_tunemv3d_eq4_for_ddim():
    """x̂ = x + α(x − x̄) with x, x̄ the DDIM steps of ε_mv(c) and ε_ind(c), for the CFG'd step x."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    t, x_t = scheduler.timesteps[3], torch.randn(4, 4, 8, 8)
    mv_cond, mv_uncond, ind_cond = torch.randn(3, 4, 4, 8, 8)
    alpha = 7.5
    step = lambda eps: scheduler.step(eps, t, x_t).prev_sample  # noqa: E731
    epsilon = classifier_free(mv_cond, mv_uncond, 7.5)
    guided = step(consistency_guidance(epsilon, mv_cond, ind_cond, alpha))
    x, x_mv, x_ind = step(epsilon), step(mv_cond), step(ind_cond)
    torch.testing.assert_close(guided, x + alpha * (x_mv - x_ind), atol=1e-4, rtol=1e-4)
    assert (guided - x).abs().max() > 0.1  # the guidance moved the step


def test_mix_schedules_hit_their_ends_and_grow_towards_clean():
    for kind in ("linear", "cosine", "quadratic"):
        schedule = MixSchedule(kind, start=0.2, end=0.9)
        assert schedule(1000, 1000) == pytest.approx(0.2) and schedule(0, 1000) == pytest.approx(0.9)
        values = [schedule(t, 1000) for t in range(1000, -1, -100)]
        assert values == sorted(values), kind  # λ grows as t -> 0 (Distillation-free Text-to-3D §3.4)
    assert MixSchedule("quadratic")(500, 1000) < MixSchedule("linear")(500, 1000)  # stays small for longer
    assert MixSchedule("seed002") == MixSchedule("quadratic")  # the old name is an alias
    assert MixSchedule.constant(0.3)(700, 1000) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown mix schedule 'exp'"):
        MixSchedule("exp")
    with pytest.raises(ValueError, match="end must be in"):
        MixSchedule("linear", 0.2, 1.5)


def test_consistency_steps_are_spread_uniformly():
    assert consistency_steps(10, 0.5) == {1, 3, 5, 7, 9}
    assert consistency_steps(10, 0.0) == set() and consistency_steps(10, 1.0) == set(range(10))
    steps = sorted(consistency_steps(50, 0.25))
    assert len(steps) == 12 and max(b - a for a, b in itertools.pairwise(steps)) <= 5
    with pytest.raises(ValueError, match="consistency_ratio"):
        consistency_steps(10, 1.5)


# --------------------------------------------------------------------------------- matches diffusers
@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++", "euler"])
def test_2d_and_mixed_at_lambda_0_reproduce_diffusers(folders, zero_pipe, scheduler):
    expected = diffusers_latents(folders["sd"], scheduler)
    for options in ({"sampler": "2d"}, {"sampler": "mixed", "sampler_options": {"schedule": MixSchedule.constant(0.0)}}):
        latents = run(zero_pipe, scheduler=scheduler, **options).latents[0]
        torch.testing.assert_close(latents, expected, atol=1e-4, rtol=0, msg=str(options))


def test_2d_reproduces_diffusers_for_a_v_prediction_backbone(folders):
    pipe = adapter_pipeline(folders["sd_v"])
    assert pipe.backbone.prediction_type == "v_prediction"
    torch.testing.assert_close(run(pipe, sampler="2d").latents[0], diffusers_latents(folders["sd_v"], "ddim"),
                               atol=1e-4, rtol=0)


def test_zero_initialised_adapters_give_the_2d_result_with_every_sampler(zero_pipe):
    baseline = run(zero_pipe, sampler="2d").latents
    for sampler, extra in (("mv", {}), ("consistency", {}), ("mixed", {}), ("refine", {"sampler_options": {"rounds": 0}})):
        torch.testing.assert_close(run(zero_pipe, sampler=sampler, **extra).latents, baseline, atol=1e-4, rtol=0,
                                   msg=sampler)


def test_consistency_with_alpha_0_equals_mv_and_alpha_moves_it(awake_pipe):
    mv = run(awake_pipe, sampler="mv").latents
    assert (mv - run(awake_pipe, sampler="2d").latents).abs().max() > 1e-3  # awake: the adapter matters
    torch.testing.assert_close(run(awake_pipe, sampler="consistency", sampler_options={"consistency_scale": 0.0}).latents, mv,
                               atol=0, rtol=0)
    guided = run(awake_pipe, sampler="consistency", sampler_options={"consistency_ratio": 1.0}).latents
    assert (guided - mv).abs().max() > 1e-3


def test_refine_rounds_change_the_views_and_stay_deterministic(awake_pipe):
    first = run(awake_pipe, sampler="refine", sampler_options={"rounds": 1}).latents
    assert (first - run(awake_pipe, sampler="refine", sampler_options={"rounds": 0}).latents).abs().max() > 1e-3
    torch.testing.assert_close(run(awake_pipe, sampler="refine", sampler_options={"rounds": 1}).latents, first, atol=0, rtol=0)


# --------------------------------------------------------------------------- references and view counts
def test_reference_views_come_back_bit_exact(awake_pipe):
    size = awake_pipe.backbone.image_resolution
    reference = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    out = run(awake_pipe, sampler="consistency", num_views=5, reference_images=reference, reference_views=[0, 3])
    assert out.references[0].tolist() == [True, False, False, True, False]
    assert torch.equal(out.pixels[0, 0], reference[0]) and torch.equal(out.pixels[0, 3], reference[1])
    encoded = awake_pipe.backbone.encode_views(reference[None] * 2 - 1)[0]
    assert torch.equal(out.latents[0, [0, 3]], encoded)  # never updated by the sampler
    free = run(awake_pipe, sampler="consistency", num_views=5)
    assert (out.latents[0, 1] - free.latents[0, 1]).abs().max() > 1e-4  # the references steer the others


@pytest.mark.parametrize("views", [1, 2, 7, 16])
def test_any_number_of_views(awake_pipe, views):
    out = awake_pipe(PROMPT, num_views=views, steps=1, seed=0, progress=False, sampler="consistency")
    size = awake_pipe.backbone.image_resolution
    assert out.pixels.shape == (1, views, 3, size, size) and torch.isfinite(out.pixels).all()
    assert out.cameras.shape == (1, views)


def test_same_seed_same_views_other_seed_other_views(awake_pipe):
    a, b = run(awake_pipe, sampler="mv").latents, run(awake_pipe, sampler="mv").latents
    assert torch.equal(a, b)
    assert (run(awake_pipe, sampler="mv", seed=1).latents - a).abs().max() > 1e-2


def test_several_prompts_batch_like_diffusers(folders, zero_pipe):
    out = zero_pipe([PROMPT, PROMPT], num_views=2, steps=2, seed=0, progress=False, sampler="2d")
    pipeline = StableDiffusionPipeline.from_pretrained(folders["sd"], safety_checker=None)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    expected = pipeline([PROMPT, PROMPT], num_images_per_prompt=2, num_inference_steps=2, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(out.latents.flatten(0, 1), expected, atol=1e-4, rtol=0)


def test_pixel_space_if_backbone_samples_with_a_learned_variance_schedule(folders):
    pipe = adapter_pipeline(folders["if"], awake=True)
    out = pipe(PROMPT, num_views=3, steps=2, seed=0, progress=False, sampler="consistency", scheduler="ddpm")
    assert out.latents.shape[2] == 3 and torch.isfinite(out.latents).all()
    assert out.field.render(out.cameras[0].rescale(8, 8)).shape == (1, 3, 3, 8, 8)


def test_pixel_space_ddim_steps_use_the_epsilon_of_the_clipped_x0():
    """x_{t-1} = √ᾱ'·clip(x̂0) + √(1−ᾱ')·ε̂ with ε̂ recomputed from clip(x̂0) in pixel space; latent backbones
    keep diffusers' default (the unclipped ε), so they still match diffusers' own pipelines."""
    from tunemv.sampling.denoising_loop import step_arguments

    scheduler = make_scheduler("ddim", {"beta_schedule": "squaredcos_cap_v2", "clip_sample": True})
    scheduler.set_timesteps(10)
    t, previous = scheduler.timesteps[0], scheduler.timesteps[1]
    a, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[previous]
    x, eps = torch.full((1, 3, 4, 4), 0.9), torch.full((1, 3, 4, 4), -0.8)
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    assert ((x - (1 - a).sqrt() * eps) / a.sqrt()).abs().min() > 1  # the clip is active
    consistent = (x - a.sqrt() * x0) / (1 - a).sqrt()
    for pixel_space, direction in ((True, consistent), (False, eps)):
        step = scheduler.step(eps, t, x, **step_arguments(scheduler, 0.0, None, pixel_space=pixel_space))
        torch.testing.assert_close(step.prev_sample, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * direction,
                                   atol=1e-5, rtol=1e-5, msg=f"pixel_space={pixel_space}")
    unclipped = make_scheduler("ddim", {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False})
    assert "use_clipped_model_output" not in step_arguments(unclipped, 0.0, None, pixel_space=True)


def test_auto_scheduler_is_ddpm_for_pixel_backbones_and_ddim_for_latent_ones(folders, zero_pipe):
    options = dict(num_views=2, steps=3, seed=0, progress=False, sampler="mv")
    pixel = adapter_pipeline(folders["if"], awake=True)
    auto = pixel(PROMPT, **options).latents
    assert torch.equal(auto, pixel(PROMPT, scheduler="ddpm", **options).latents)
    assert not torch.equal(auto, pixel(PROMPT, scheduler="ddim", **options).latents)
    assert torch.equal(zero_pipe(PROMPT, **options).latents, zero_pipe(PROMPT, scheduler="ddim", **options).latents)


# ------------------------------------------------------------------------------- another 2D model
def test_mixed_with_another_2d_model_at_lambda_0_is_that_model(folders, zero_pipe):
    options = {"schedule": MixSchedule.constant(0.0), "two_d_model": str(folders["sd_other"])}
    latents = run(zero_pipe, sampler="mixed", sampler_options=options).latents[0]
    torch.testing.assert_close(latents, diffusers_latents(folders["sd_other"], "ddim"), atol=1e-4, rtol=0)


def test_a_2d_model_from_another_space_is_refused(folders, zero_pipe):
    with pytest.raises(ModelError, match=r"if: cannot mix its 2D score .* space \(pixels vs VAE latents\)"):
        run(zero_pipe, sampler="mixed", sampler_options={"two_d_model": str(folders["if"])})
    other = Backbone.from_pretrained(folders["sd_other"])
    other.noise_scheduler = DDPMScheduler(beta_schedule="linear")
    with pytest.raises(ModelError, match="noise schedule"):
        run(zero_pipe, sampler="mixed", sampler_options={"two_d_model": other})


# ------------------------------------------------------------------------------- registry, schedulers
def test_registry_names_clash_and_list(monkeypatch):
    monkeypatch.setattr(registry, "_SAMPLERS", dict(registry._SAMPLERS))
    assert {"mv", "consistency", "mixed", "2d", "refine"} <= set(registry.available_samplers())
    with pytest.raises(registry.SamplerError, match="'mv' is already registered"):
        registry.register_sampler("mv")(lambda: None)
    with pytest.raises(registry.SamplerError, match=r"unknown sampler 'nope'; available: 2d, consistency"):
        registry.get_sampler("nope")


def test_plugins_load_lazily_and_broken_ones_are_skipped(monkeypatch, caplog):
    class PluginSampler:
        pass

    def broken():
        raise ImportError("missing dependency")

    builtins = list(registry.entry_points(group=registry.ENTRY_POINT_GROUP))  # tunemv's own, from pyproject.toml
    assert {point.name for point in builtins} >= {"mv", "consistency", "mixed", "2d", "refine"}
    clash = SimpleNamespace(name="mv", value="pkg:FakeMV", load=lambda: PluginSampler)
    points = [clash, SimpleNamespace(name="plugin-sampler", value="pkg:PluginSampler", load=lambda: PluginSampler),
              SimpleNamespace(name="broken-sampler", value="bad:Sampler", load=broken), *builtins]
    calls = []
    monkeypatch.setattr(registry, "entry_points", lambda group: calls.append(group) or points)
    monkeypatch.setattr(registry, "_SAMPLERS", {})
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    assert calls == []  # nothing is scanned before the first lookup
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        assert registry.get_sampler("mv").__name__ == "MultiviewSampler"  # a built-in's name stays the built-in's
        assert registry.get_sampler("plugin-sampler") is PluginSampler
    assert calls == ["tunemv.samplers"]
    assert "skipping sampler plugin 'broken-sampler'" in caplog.text and "missing dependency" in caplog.text
    assert "broken-sampler" not in registry.available_samplers() and calls == ["tunemv.samplers"]  # scanned once


def test_the_registry_imports_no_sampler():
    """The built-ins register through entry points: registry.py imports nothing of samplers.py."""
    source = Path(registry.__file__).read_text()
    assert "tunemv.sampling.samplers" not in source and "import samplers" not in source


def test_a_plugin_sampler_runs_through_the_pipeline(monkeypatch, awake_pipe):
    from tunemv.sampling.samplers import GuidedSampler

    monkeypatch.setattr(registry, "_SAMPLERS", dict(registry._SAMPLERS))

    @registry.register_sampler("independent-only")
    class IndependentOnly(GuidedSampler):  # the adapter without NeuS, as a plugin would write it
        def modes(self, job, step):
            return ("independent",)

        def combine(self, job, predictions, step):
            return classifier_free(predictions.cond["independent"], predictions.uncond.get("independent"),
                                   job.guidance_scale)

    out = run(awake_pipe, sampler="independent-only").latents
    assert (out - run(awake_pipe, sampler="mv").latents).abs().max() > 1e-4


def test_a_plugin_sampler_gets_an_option_of_its_own(monkeypatch, awake_pipe):
    from tunemv.sampling.samplers import GuidedSampler

    monkeypatch.setattr(registry, "_SAMPLERS", dict(registry._SAMPLERS))
    received = []

    @registry.register_sampler("decaying")
    class Decaying(GuidedSampler):  # scales consistency guidance down by its own option
        def __init__(self, decay: float = 0.5):
            super().__init__(consistency_ratio=1.0)
            self.decay = decay
            received.append(decay)

        def combine(self, job, predictions, step):
            cond, uncond = predictions.cond, predictions.uncond
            return classifier_free(cond["mv"], uncond.get("mv"), job.guidance_scale) * (1 - 0.01 * self.decay)

    out = run(awake_pipe, sampler="decaying", sampler_options={"decay": 0.8}).latents
    assert received == [0.8]
    assert (out - run(awake_pipe, sampler="decaying").latents).abs().max() > 1e-6 and received == [0.8, 0.5]
    with pytest.raises(registry.SamplerError, match="sampler 'decaying' has no option 'decai'; its options: decay"):
        run(awake_pipe, sampler="decaying", sampler_options={"decai": 0.8})
    with pytest.raises(registry.SamplerError, match="sampler 'refine': strength must be in"):
        run(awake_pipe, sampler="refine", sampler_options={"strength": 2.0})


def test_sampler_options_from_strings_are_typed_by_the_signature():
    from tunemv.sampling.options import parse_option_strings

    assert parse_option_strings("consistency", ["consistency_ratio=1", "consistency-scale=3"]) == \
        {"consistency_ratio": 1.0, "consistency_scale": 3.0}
    assert parse_option_strings("mixed", ["schedule=linear", "two_d_model=123"]) == \
        {"schedule": "linear", "two_d_model": "123"}  # str-typed: the text as written
    assert parse_option_strings("refine", ["rounds=3"]) == {"rounds": 3}
    for pairs, message in ((["rounds=many"], "option 'rounds' expects int, got 'many'"),
                           (["consistency_ratio=true"], "expects float or None, got 'true'"),
                           (["rounds"], "expects KEY=VALUE"), (["wobble=1"], "has no option 'wobble'")):
        with pytest.raises(registry.SamplerError, match=message):
            parse_option_strings("refine", pairs)


def test_unknown_scheduler_lists_the_known_ones(zero_pipe):
    with pytest.raises(SchedulerError, match="unknown scheduler 'warp'; choose one of ddim, ddpm"):
        run(zero_pipe, scheduler="warp")
    assert type(make_scheduler("EulerAncestralDiscreteScheduler", zero_pipe.backbone.scheduler_config)).__name__ \
        == "EulerAncestralDiscreteScheduler"


# ---------------------------------------------------------------------------------- adapter folders
def test_adapter_folder_round_trip(tmp_path, awake_pipe):
    folder = save_adapter(awake_pipe, tmp_path / "adapter")
    loaded = MultiviewPipeline.from_pretrained(folder)
    assert loaded.backbone.name_or_path == awake_pipe.backbone.name_or_path
    torch.testing.assert_close(run(loaded, sampler="consistency").latents,
                               run(awake_pipe, sampler="consistency").latents, atol=0, rtol=0)


def test_broken_adapter_folders_get_clear_errors(tmp_path, folders, awake_pipe):
    with pytest.raises(AdapterError, match=r"adapter\.json: missing"):
        MultiviewPipeline.from_pretrained(tmp_path)
    folder = save_adapter(awake_pipe, tmp_path / "adapter")
    with pytest.raises(AdapterError, match=r"does not fit backbone .*if"):
        MultiviewPipeline.from_pretrained(folder, backbone=str(folders["if"]))


# ------------------------------------------------------------------ refine re-noising and guided-step counts
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_refine_renoises_to_t_star_after_a_finished_run(zero_pipe, name):
    """The re-noised latent's noise level is that of t*, even though the scheduler has just run to the end of
    its schedule (σ-indexed schedulers then read σ = 0 from their step index: issue 19, defect 4)."""
    from tunemv.sampling.samplers import _start_index, renoise

    steps, strength = 10, 0.5
    start = _start_index(steps, strength)
    scheduler = make_scheduler(name, zero_pipe.backbone.scheduler_config, "sd")
    sample = torch.zeros(4, 4, 8, 8)
    for begin in (0, start):  # a whole run, then a refine round's run of the tail, as round 2 finds it
        scheduler.set_timesteps(steps)
        if begin and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin * scheduler.order)
        for t in scheduler.timesteps[begin * scheduler.order:]:
            sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
    noise = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = renoise(scheduler, steps, start, torch.zeros_like(noise), noise)
    t_star = int(scheduler.timesteps[start * scheduler.order])
    alpha_bar = float(zero_pipe.backbone.noise_scheduler.alphas_cumprod[t_star])
    # VP schedulers noise as sqrt(ᾱ)x + sqrt(1 − ᾱ)ε; σ-space ones (init_noise_sigma > 1) as x + σε.
    level = ((1 - alpha_bar) / alpha_bar) ** 0.5 if scheduler.init_noise_sigma > 1 else (1 - alpha_bar) ** 0.5
    assert level > 0.5
    torch.testing.assert_close(noised.std() / noise.std(), torch.tensor(level), rtol=0.02, atol=0)


class CountingConsistency:
    """Wraps a ConsistencySampler and records, per run, how many model evaluations took guidance."""

    def __init__(self, **options):
        from tunemv.sampling.samplers import ConsistencySampler, RefineSampler

        base = RefineSampler if "rounds" in options else ConsistencySampler
        self.runs: list[list[bool]] = []
        runs = self.runs

        class Counting(base):
            def modes(self, job, step):
                if step.index == 0:
                    runs.append([])
                modes = super().modes(job, step)
                runs[-1].append("independent" in modes)
                return modes

        self.sampler = Counting(**options)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_half_the_model_evaluations_are_guided_at_k_half(awake_pipe, name):
    counting = CountingConsistency(consistency_ratio=0.5)
    run(awake_pipe, sampler=counting.sampler, scheduler=name, steps=6)
    (evaluations,) = counting.runs
    assert sum(evaluations) == round(0.5 * len(evaluations)), evaluations  # Heun: 11 evaluations for 6 steps


@pytest.mark.parametrize("name", ["ddim", "heun", "dpmsolver++"])
def test_refine_rounds_guide_half_of_their_own_evaluations(awake_pipe, name):
    counting = CountingConsistency(rounds=2, strength=0.5, consistency_ratio=0.5)
    run(awake_pipe, sampler=counting.sampler, scheduler=name, steps=6)
    assert len(counting.runs) == 3
    for evaluations in counting.runs:
        assert sum(evaluations) == round(0.5 * len(evaluations)), counting.runs


# ----------------------------------------------------------------------------------- IF's learned variance
@pytest.mark.parametrize("steps", [2, 6])
def test_2d_on_if_is_diffusers_ifpipeline_with_its_learned_variance(folders, steps):
    """IF predicts a variance half (learned_range); DDPM steps with the prompted prediction's, as IFPipeline.
    It was dropped for "fixed_small" (issue 19, defect 2), which moved every step's noise level."""
    from diffusers import IFPipeline

    pipe = adapter_pipeline(folders["if"])
    ours = pipe(PROMPT, num_views=3, steps=steps, seed=0, progress=False, sampler="2d", scheduler="ddpm").latents
    reference = IFPipeline.from_pretrained(folders["if"], safety_checker=None, feature_extractor=None,
                                           watermarker=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    expected = reference(PROMPT, num_images_per_prompt=3, num_inference_steps=steps, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(0), output_type="pt", clean_caption=False).images
    torch.testing.assert_close(ours[0], expected, atol=1e-4, rtol=0)


def test_if_multiview_samplers_step_with_the_learned_variance(folders):
    """"mv" and "mixed" hand DDPM a variance too: a fixed-variance run of the same job differs."""
    pipe = adapter_pipeline(folders["if"], awake=True)
    learned = pipe(PROMPT, num_views=3, steps=4, seed=0, progress=False, sampler="mv", scheduler="ddpm").latents
    fixed = pipe(PROMPT, num_views=3, steps=4, seed=0, progress=False, sampler="mv",
                 scheduler=make_scheduler("ddpm", {**pipe.backbone.scheduler_config, "variance_type": "fixed_small"})).latents
    assert (learned - fixed).abs().max() > 1e-3


def test_field_renders_are_deterministic_whatever_mode_the_modules_are_in(awake_pipe):
    """turntable.gif differed between two runs of one seed (up to 7/255 in 7.6% of values): the field was
    rendered with stratified ray samples whenever the denoiser was in train mode (issue 22, item 8)."""
    awake_pipe.denoiser.train()
    out = run(awake_pipe, sampler="mv")
    first, second = out.field.turntable(3), out.field.turntable(3)
    assert torch.equal(first, second)
    assert awake_pipe.denoiser.training  # the caller's mode is left as it was
    awake_pipe.denoiser.eval()
    assert torch.equal(run(awake_pipe, sampler="mv").field.turntable(3), first)


def test_cameras_that_look_away_from_the_object_are_refused_or_warned(zero_pipe):
    from tunemv.geometry.cameras import Cameras, orbit
    from tunemv.geometry.rays import sees_sphere

    cameras = orbit(3, 20.0, resolution=32)
    c2w = cameras.c2w.clone()
    c2w[:, :3, 0] *= -1  # turn every camera 180° about its own y axis: it now looks away from the origin
    c2w[:, :3, 2] *= -1
    away = Cameras(cameras.K, c2w, cameras.width, cameras.height)
    assert sees_sphere(cameras).all() and not sees_sphere(away).any()
    with pytest.raises(ValueError, match="no camera sees the unit sphere"):
        run(zero_pipe, cameras=away)
    mixed = Cameras(cameras.K, torch.cat([cameras.c2w[:2], c2w[2:]]), cameras.width, cameras.height)
    with pytest.warns(UserWarning, match="1 of 3 views see nothing"):
        run(zero_pipe, cameras=mixed)
