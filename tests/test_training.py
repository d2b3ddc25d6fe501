"""MultiviewAdapterSystem: it learns, the backbone never moves, checkpoints hold the adapter only, resume is exact."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from tiny_pipelines import tiny_if

from tunemv.data.batch import collate_multiview
from tunemv.data.datamodule import MultiviewDataModule
from tunemv.data.generate import generate_procedural_dataset
from tunemv.training.config import DropoutConfig, EMAConfig, OptimizationConfig, ValidationConfig
from tunemv.training.system import TRAINABLE, MultiviewAdapterSystem, NonFiniteLossError, ema_key_pairs

SMALL_NEUS = {"num_coarse": 16, "num_importance": 16, "upsample_steps": 1}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    tiny_if().save_pretrained(root / "backbone")
    generate_procedural_dataset(root / "data", num_objects=2, num_views=8, resolution=16, val_fraction=0,
                                categories=["chair"], progress=False)
    return root


def datamodule(workspace) -> MultiviewDataModule:
    return MultiviewDataModule(str(workspace / "data"), num_views=4, num_supervision_views=4, resolution=16,
                               batch_size=2, view_selection="uniform")


def trainer(max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **{"enable_checkpointing": False, "limit_val_batches": 0, **kwargs})


def trainable_state(system) -> dict:
    return {k: v.clone() for k, v in system.state_dict().items() if k.startswith(TRAINABLE)}


def test_training_lowers_held_out_render_and_diffusion_losses_and_leaves_the_backbone(workspace):
    data = datamodule(workspace)
    data.setup("fit")
    batch = collate_multiview([data.train_set[i] for i in range(2)])
    system = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS,
                                    optimization=OptimizationConfig(warmup_steps=5, learning_rate=2e-3,
                                                                    neus_learning_rate=5e-3),
                                    dropouts=DropoutConfig(reference=0, neus=0, text=0))
    frozen = copy.deepcopy(system.backbone.state_dict())

    def evaluate():  # fixed noise and timesteps; the render loss covers the 4 held-out supervision views too
        system.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            terms = system.losses(batch)
        system.train()
        return terms

    before = evaluate()
    trainer(30).fit(system, data)
    after = evaluate()
    # Measured on 2 CPU cores: render 0.191 -> 0.079, diffusion 1.20 -> 0.82 after 30 steps.
    assert after["neus_render"] < before["neus_render"] / 2
    assert after["diffusion"] < before["diffusion"] / 1.25
    for name, tensor in system.backbone.state_dict().items():
        assert torch.equal(tensor, frozen[name]), f"frozen weight {name} changed"


class Killed(Exception):
    pass


class StopAfter(Callback):
    """Stands in for a killed run: raise right after step ``k``'s checkpoint was written."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_start(self, trainer, module, batch, batch_index):
        if trainer.global_step == self.steps:
            raise Killed


def test_resuming_a_killed_run_gives_the_same_weights(workspace, tmp_path):
    def system():
        return MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS,
                                      optimization=OptimizationConfig(warmup_steps=2), ema=EMAConfig(0.9),
                                      dropouts=DropoutConfig(reference=0.5, neus=0.3, text=0.3))

    uninterrupted = system()
    trainer(6).fit(uninterrupted, datamodule(workspace))

    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    killed = system()
    with pytest.raises(Killed):
        trainer(6, callbacks=[checkpoints, StopAfter(3)], enable_checkpointing=True).fit(killed, datamodule(workspace))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3
    assert not any(key.startswith(("backbone.", "denoiser.unet.")) for key in saved["state_dict"])

    resumed = system()
    trainer(6, enable_checkpointing=True, default_root_dir=tmp_path).fit(resumed, datamodule(workspace),
                                                                         ckpt_path=tmp_path / "last.ckpt")
    expected, got = trainable_state(uninterrupted), trainable_state(resumed)
    assert expected.keys() == got.keys() and any(k.startswith("ema.") for k in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_weights_only_snapshots_hold_one_copy_of_the_ema_and_load_as_it(workspace, tmp_path):
    from tunemv.adapters.formats import CheckpointError, load_adapter_modules

    last = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    snapshots = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True, save_top_k=-1, every_n_train_steps=4,
                                filename="snapshot-{step}")
    system = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS,
                                    optimization=OptimizationConfig(warmup_steps=2), ema=EMAConfig(0.5))
    trainer(4, callbacks=[last, snapshots], enable_checkpointing=True).fit(system, datamodule(workspace))
    full = torch.load(tmp_path / "last.ckpt", weights_only=False)
    snapshot = torch.load(tmp_path / "snapshot-step=4.ckpt", weights_only=False)
    assert full["global_step"] == snapshot["global_step"] == 4
    assert "optimizer_states" in full and "optimizer_states" not in snapshot
    assert snapshot["tunemv"]["weights"] == "ema" and full["tunemv"]["weights"] == "live+ema"
    live_names = {k for k in full["state_dict"] if k.startswith(("denoiser.neus.", "denoiser.control_branch."))}
    assert set(snapshot["state_dict"]) == live_names
    for name, value in snapshot["state_dict"].items():  # the EMA, under the live names
        ema_name = name.replace("denoiser.neus.", "ema.module.0.").replace("denoiser.control_branch.", "ema.module.1.")
        assert torch.equal(value, full["state_dict"][ema_name]), name
    assert not all(torch.equal(full["state_dict"][k], snapshot["state_dict"][k]) for k in live_names)
    # Weights, EMA and AdamW's two moments against one copy.
    assert (tmp_path / "snapshot-step=4.ckpt").stat().st_size < 0.3 * (tmp_path / "last.ckpt").stat().st_size

    neus, branch = load_adapter_modules(snapshot)  # default: the EMA, which is all a snapshot has
    for module, prefix in ((neus, "ema.module.0."), (branch, "ema.module.1.")):
        assert all(torch.equal(v, full["state_dict"][prefix + k]) for k, v in module.state_dict().items())
    with pytest.raises(CheckpointError, match="only the EMA"):
        load_adapter_modules(snapshot, ema=False)

    validated = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS, ema=EMAConfig(0.5))
    trainer(1, limit_val_batches=1).validate(validated, datamodule(workspace),
                                             ckpt_path=tmp_path / "snapshot-step=4.ckpt", verbose=False)
    state = validated.state_dict()
    for name, value in snapshot["state_dict"].items():
        assert torch.equal(state[name], value), name
    assert all(torch.equal(state[ema], state[live]) for ema, live in ema_key_pairs(state))


def test_full_fine_tune_baseline_trains_and_carries_the_unet(workspace, tmp_path):
    from tunemv.adapters.formats import CheckpointError
    from tunemv.sampling.pipeline import MultiviewPipeline
    from tunemv.training.export import export_adapter

    system = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS,
                                    optimization=OptimizationConfig(warmup_steps=0), train_backbone_unet=True,
                                    ema=EMAConfig(0.9))
    before = {k: v.clone() for k, v in system.backbone.unet.state_dict().items()}
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    trainer(2, callbacks=[checkpoints], enable_checkpointing=True).fit(system, datamodule(workspace))
    after = system.backbone.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the baseline does train the UNet
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    unet_keys = [k for k in saved["state_dict"] if k.startswith("backbone.unet.")]
    assert len(unet_keys) == len(after) and not any(k.startswith("denoiser.unet.") for k in saved["state_dict"])
    pipe = MultiviewPipeline.from_checkpoint(tmp_path / "last.ckpt")
    assert all(torch.equal(v, after[k]) for k, v in pipe.backbone.unet.state_dict().items())
    # A weights-only snapshot keeps the trained UNet next to the EMA adapter weights.
    fit = pl.Trainer(accelerator="cpu", logger=False)
    fit.strategy.connect(system)
    fit.save_checkpoint(tmp_path / "snapshot.ckpt", weights_only=True)
    snapshot = torch.load(tmp_path / "snapshot.ckpt", weights_only=False)
    assert snapshot["tunemv"]["weights"] == "ema"
    assert all(torch.equal(snapshot["state_dict"]["backbone.unet." + k], v) for k, v in after.items())
    with pytest.raises(CheckpointError, match="fine-tuned the backbone"):
        export_adapter(tmp_path / "last.ckpt", tmp_path / "adapter")


def test_non_finite_losses_are_skipped_then_stop_training(workspace):
    system = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS, max_nonfinite_steps=3)
    before = trainable_state(system)
    real_losses, calls = system.losses, []

    def nan_first(batch):
        calls.append(1)
        terms = real_losses(batch)
        return {**terms, "total": terms["total"] * float("nan")} if len(calls) == 1 else terms

    system.losses = nan_first
    trainer(2).fit(system, datamodule(workspace))
    assert system.skipped_steps == 1 and len(calls) == 2  # Lightning counts the skipped batch as a step
    assert any(not torch.equal(before[k], v) for k, v in trainable_state(system).items())

    always_nan = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS, max_nonfinite_steps=3)
    always_nan.losses = lambda batch: {"total": torch.tensor(float("nan"), requires_grad=True)}
    with pytest.raises(NonFiniteLossError, match="not finite for 3 steps in a row"):
        trainer(10).fit(always_nan, datamodule(workspace))


def test_neus_channels_must_match_the_backbone(workspace):
    with pytest.raises(Exception, match="3 channels but neus is configured for in_channels=4"):
        MultiviewAdapterSystem(str(workspace / "backbone"), neus={"in_channels": 4})


def test_validation_samples_a_grid_of_views_and_neus_renders(workspace, tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    data = MultiviewDataModule(str(workspace / "data"), num_views=3, num_supervision_views=2, resolution=16,
                               batch_size=1, view_selection="uniform", val_root=str(workspace / "data"))
    system = MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS,
                                    validation=ValidationConfig(steps=2, views=3, prompts=["a red chair", "a blue mug"]))
    pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=1, num_sanity_val_steps=0).validate(system, data)
    (grid,) = (tmp_path / "lightning_logs").rglob("samples/step_*.png")
    # 2 prompts x (views row + NeuS render row) of 16 px, 3 views wide
    assert Image.open(grid).size == (3 * 16, 2 * 2 * 16)


class RecordBatches(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_index):
        self.seen.append((trainer.global_step, batch.object_id, batch.views.view_indices.tolist()))


def test_resuming_mid_epoch_replays_exactly_the_unseen_batches(workspace, tmp_path):
    def data():  # 2 batches per epoch: the kill at step 3 falls inside epoch 1
        return MultiviewDataModule(str(workspace / "data"), num_views=2, num_supervision_views=2, resolution=16,
                                   batch_size=1, view_selection="random")

    def system():
        return MultiviewAdapterSystem(str(workspace / "backbone"), neus=SMALL_NEUS,
                                      optimization=OptimizationConfig(warmup_steps=2))

    full, resumed_batches = RecordBatches(), RecordBatches()
    uninterrupted = system()
    trainer(5, callbacks=[full]).fit(uninterrupted, data())
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    with pytest.raises(Killed):
        trainer(5, callbacks=[checkpoints, StopAfter(3)], enable_checkpointing=True).fit(system(), data())
    resumed = system()
    trainer(5, callbacks=[resumed_batches], enable_checkpointing=True, default_root_dir=tmp_path).fit(
        resumed, data(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed_batches.seen == full.seen[3:]  # same objects, same views, same steps
    expected, got = trainable_state(uninterrupted), trainable_state(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
