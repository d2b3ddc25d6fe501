"""``tunemv distill``: the one-step generator's distillation (GECO §3.1–3.2) on tiny pipelines.

The surrogate's gradient is eq. 1 in ``test_vsd``; here: one step of each stage changes G and nothing frozen,
resume is exact across the stage switch, the exported folder samples what G computed, and the teacher's
pseudo ground truth is cached once and refuses to mix settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sampling_fixtures import adapter_pipeline, save_adapter
from tiny_pipelines import tiny_if

from tunemv.cli import main
from tunemv.data.generate import generate_procedural_dataset
from tunemv.geometry.cameras import Cameras
from tunemv.sampling.pipeline import MultiviewPipeline
from tunemv.training.config import EMAConfig, OptimizationConfig, StudentConfig, VSDConfig
from tunemv.training.distillation import OneStepDistillationSystem
from tunemv.training.pseudo_ground_truth import CacheError, DistillationDataModule, PseudoGroundTruthCache

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPTS = ["a red chair", "a blue mug"]
CACHE = {"num_objects": 2, "num_views": 2, "num_render_views": 1, "steps": 2, "prompts": PROMPTS,
         "num_reference_objects": 1}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny IF backbone and a randomly woken adapter folder on it, with its pseudo ground truth cached."""
    root = tmp_path_factory.mktemp("distill")
    tiny_if().save_pretrained(root / "if")
    generate_procedural_dataset(root / "chairs", num_objects=2, num_views=4, resolution=16, val_fraction=0,
                                categories=["chair"], progress=False, workers=1)
    folder = save_adapter(adapter_pipeline(root / "if", awake=True), root / "teacher")
    data(folder, root / "cache").prepare_data()
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: two threads on a busy 2-core machine were slower
    yield
    torch.set_num_threads(threads)


def data(folder, cache_dir, **overrides) -> DistillationDataModule:
    return DistillationDataModule(str(folder), cache_dir=str(cache_dir), batch_size=2,
                                  reference_root=str(Path(folder).parent / "chairs"), **{**CACHE, **overrides})


def system(folder, **kwargs) -> OneStepDistillationSystem:
    return OneStepDistillationSystem(str(folder), optimization=OptimizationConfig(1e-3, 1e-3, 0.0, warmup_steps=0),
                                     student=StudentConfig(learning_rate=1e-3), **kwargs)


def trainer(max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **{"enable_checkpointing": False, **kwargs})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("vsd_steps", [1, 0], ids=["stage I (VSD)", "stage II (3D-consistent)"])
def test_one_step_of_each_stage_changes_the_generator_and_leaves_everything_frozen(teacher, vsd_steps):
    model = system(teacher, vsd=VSDConfig(steps=vsd_steps))
    backbone, teacher_parts = snapshot(model.backbone.unet), snapshot(model.teacher)
    generator, student, neus = snapshot(model.denoiser.control_branch), snapshot(model.student), \
        snapshot(model.denoiser.neus)
    trainer(1).fit(model, data(teacher, teacher.parent / "cache"))
    assert not changed(backbone, model.backbone.unet), "the frozen backbone changed"
    assert not changed(teacher_parts, model.teacher), "the teacher changed"
    assert changed(generator, model.denoiser.control_branch)
    # Stage I trains the student (eq. 2) and leaves G's NeuS (vsd_train_neus off); stage II the reverse.
    assert changed(student, model.student) == (vsd_steps == 1)
    assert changed(neus, model.denoiser.neus) == (vsd_steps == 0)


def test_resume_across_the_stage_switch_is_exact(teacher, tmp_path):
    def run(max_steps: int, resume: str | None = None) -> OneStepDistillationSystem:
        model = system(teacher, vsd=VSDConfig(steps=2), ema=EMAConfig(0.9))
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0,
                                      every_n_train_steps=1)
        trainer(max_steps, enable_checkpointing=True, callbacks=[checkpoints]).fit(
            model, data(teacher, teacher.parent / "cache"), ckpt_path=resume)
        return model

    straight = snapshot(run(4))
    run(2)  # "killed" after stage I
    resumed = snapshot(run(4, resume=str(tmp_path / "checkpoints" / "last.ckpt")))
    kept = [k for k in straight if k.startswith(("denoiser.neus.", "denoiser.control_branch.", "student.", "ema."))]
    assert kept and all(torch.equal(straight[k], resumed[k]) for k in kept)
    # Calibration: a run one step shorter differs, so the comparison can fail.
    shorter = snapshot(run(3))
    assert any(not torch.equal(straight[k], shorter[k]) for k in kept)


def test_the_exported_generator_samples_what_g_computed(teacher, tmp_path, capsys):
    """``tunemv distill`` then ``tunemv export``: a generator folder whose pipeline defaults to one-step, and
    whose one-step views are G(z) of the trained system for the same noise."""
    root = tmp_path / "run"
    args = ["distill", "--config", str(CONFIGS / "distill_demo.yaml"), "--model.teacher", str(teacher),
            "--data.init_args.teacher", str(teacher), "--data.init_args.cache_dir", str(teacher.parent / "cache"),
            "--data.init_args.reference_root", str(teacher.parent / "chairs"),
            *[f"--data.init_args.{key}={json.dumps(value)}" for key, value in CACHE.items()],
            "--model.vsd.steps", "1", "--trainer.max_steps", "2", "--trainer.default_root_dir", str(root),
            "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false"]
    assert main(args) == 0
    last = root / "checkpoints" / "last.ckpt"
    assert main(["export", str(last), str(tmp_path / "generator")]) == 0
    assert "one-step generator" in capsys.readouterr().out
    info = json.loads((tmp_path / "generator" / "adapter.json").read_text())
    assert info["sampling"]["sampler"] == "one-step" and info["generator"]["vsd_steps"] == 1

    pipe = MultiviewPipeline.from_pretrained(tmp_path / "generator")
    noise = torch.randn(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    out = pipe(PROMPTS[0], num_views=2, latents=noise, progress=False)  # defaults: one-step, unguided
    model = OneStepDistillationSystem.load_from_checkpoint(last, map_location="cpu")
    # The export holds the EMA weights when the run kept one; this config does.
    model.denoiser.neus.load_state_dict(pipe.denoiser.neus.state_dict())
    model.denoiser.control_branch.load_state_dict(pipe.denoiser.control_branch.state_dict())
    model.eval()
    with torch.no_grad():
        text = model.backbone.encode_prompt([PROMPTS[0]]).float()
        expected = model.generate(noise, out.cameras.rescale(16, 16), text)
    torch.testing.assert_close(out.latents, expected, rtol=1e-4, atol=1e-4)
    guided = pipe(PROMPTS[0], num_views=2, latents=noise, guidance_scale=3.0, progress=False)
    assert (guided.latents - expected).abs().max() > 1e-3  # calibration: CFG changes the views

    # `tunemv sample` takes the folder's sampler and scale too, and writes them down.
    samples = tmp_path / "samples"
    assert main(["sample", "--adapter", str(tmp_path / "generator"), "--prompt", PROMPTS[0], "--num-views", "2",
                 "--out", str(samples), "--turntable-frames", "0", "--quiet"]) == 0
    written = json.loads(next(samples.glob("*/sampling.json")).read_text())
    assert written["sampler"] == "one-step" and written["guidance_scale"] == 1.0
    assert written["sampler_options"] == {"timestep": info["sampling"]["sampler_options"]["timestep"]}
    # ... and so does the checkpoint itself, sampled directly.
    assert main(["sample", "--ckpt", str(last), "--prompt", PROMPTS[0], "--num-views", "2",
                 "--out", str(tmp_path / "from-ckpt"), "--turntable-frames", "0", "--quiet"]) == 0
    assert json.loads(next((tmp_path / "from-ckpt").glob("*/sampling.json")).read_text())["sampler"] == "one-step"


def test_the_cache_is_built_once_and_refuses_other_settings(teacher, tmp_path):
    cache_dir = teacher.parent / "cache"
    chairs = str(teacher.parent / "chairs")
    cache = PseudoGroundTruthCache(cache_dir, str(teacher), reference_root=chairs, **CACHE)
    assert len(cache) == 3
    item = cache[1]
    assert item.caption in PROMPTS and item.renders.shape == (3, 3, 16, 16)  # 2 views + 1 novel viewpoint
    assert tuple(item.cameras.shape) == (2,) and tuple(item.render_cameras.shape) == (3,)
    # A rebuilt object is the one that was there: sampling and rendering are seeded per object.
    copy_dir = tmp_path / "copy"
    rebuilt = PseudoGroundTruthCache(copy_dir, str(teacher), reference_root=chairs, **CACHE)
    rebuilt.root.mkdir()
    (copy_dir / "settings.json").write_text((cache_dir / "settings.json").read_text())
    rebuilt.build(log=lambda message: None)
    again = rebuilt[1]
    for key in ("noise", "views", "renders", "opacity"):  # (to float rounding: other thread counts here)
        torch.testing.assert_close(getattr(again, key), getattr(item, key), rtol=0, atol=1e-4)
    assert (rebuilt[0].views - item.views).abs().max() > 1e-2  # calibration: another object differs
    with pytest.raises(CacheError, match=r"settings\.json.*other settings \(steps\)"):
        PseudoGroundTruthCache(cache_dir, str(teacher), reference_root=chairs, **{**CACHE, "steps": 3}).build()
    (copy_dir / "objects" / "000000.safetensors").write_bytes(b"broken")
    with pytest.raises(CacheError, match=r"000000\.safetensors: not a readable cache object"):
        rebuilt[0]


def test_a_batch_of_the_cache_collates_for_the_system(teacher):
    module = data(teacher, teacher.parent / "cache")
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch.noise.shape == (2, 2, 3, 16, 16) and tuple(batch.render_cameras.shape) == (2, 3)
    assert batch.reference.dtype == torch.bool and batch.reference.shape == (2, 2)
    assert set(batch.caption) <= {module.cache[i].caption for i in range(len(module.cache))}


def test_image_objects_keep_their_reference_view_and_its_orbit(teacher):
    """An image→multiview object: view 0 is the training chair's view 0, clean, on that view's own camera."""
    from tunemv.data.format import load_image, read_cameras
    from tunemv.sampling.references import prepare_references

    cache = PseudoGroundTruthCache(teacher.parent / "cache", str(teacher), reference_root=str(teacher.parent / "chairs"),
                                   **CACHE)
    item, folder = cache[2], cache.reference_object(2)
    assert item.reference.tolist() == [True, False]
    assert item.caption == (folder / "caption.txt").read_text().splitlines()[0].strip()
    pipe = MultiviewPipeline.from_pretrained(teacher)
    expected = prepare_references(pipe.backbone, [str(folder / "images" / "000.png")], None, 1, 2,
                                  pipe.backbone.image_resolution).latents[0, 0]
    torch.testing.assert_close(item.views[0], expected)
    truth = read_cameras(folder / "cameras.json")[0]
    torch.testing.assert_close(item.cameras[0].c2w, truth.c2w.float(), atol=1e-4, rtol=0)
    assert load_image(folder / "images" / "000.png")[0].shape[-1] == 16


def test_g_clips_as_the_sampler_does_but_passes_gradient_through_the_clip(teacher):
    """Forward: x̂0 in [-1, 1] (pixel space clips as the sampler does). Backward: a pixel outside the range
    still moves G; under a plain clamp it would get no gradient and could never come back."""
    model = system(teacher)
    noise = 20 * torch.randn(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # far out of range
    cameras = PseudoGroundTruthCache(teacher.parent / "cache", str(teacher),
                                     reference_root=str(teacher.parent / "chairs"), **CACHE)[0].cameras
    text = model.backbone.encode_prompt([PROMPTS[0]]).float()
    x = model.generate(noise, Cameras.stack([cameras]), text)
    assert x.abs().max() <= 1.0
    unclipped = model.to_sample(model.denoiser(noise, torch.full((1, 2), model.generator_timestep), Cameras.stack([cameras]),
                                               text.hidden_states).prediction, noise,
                                torch.full((1, 2), model.generator_timestep))
    outside = (unclipped.abs() > 1).detach()
    assert outside.any()
    (x * outside).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.denoiser.control_branch.parameters())
