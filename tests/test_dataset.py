import shutil

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningDataModule

from tunemv.data.batch import collate_multiview
from tunemv.data.datamodule import MultiviewDataModule
from tunemv.data.dataset import EpochSampler, MultiviewDataset, select_views
from tunemv.data.format import load_mask
from tunemv.errors import DatasetError
from tunemv.geometry.cameras import Cameras

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_item_contents(procedural_root):
    ds = MultiviewDataset(procedural_root, "train", num_views=8, num_supervision_views=8, resolution=16)
    assert len(ds) == 4  # 6 objects, 2 in val.txt
    item = ds[0]
    assert item.views.images.shape == (8, 3, 16, 16) and item.views.masks.shape == (8, 1, 16, 16)
    assert item.views.images.min() >= -1 and item.views.images.max() == 1  # white background maps to +1
    assert set(item.views.masks.unique().tolist()) == {0.0, 1.0}
    assert isinstance(item.views.cameras, Cameras) and item.views.cameras.shape == (8,)
    assert (item.views.cameras.height, item.views.cameras.width) == (16, 16)
    assert item.caption in (procedural_root / item.object_id / "caption.txt").read_text()
    sup = item.supervision
    assert sup.images.shape == (8, 3, 16, 16) and sup.cameras.shape == (8,)
    assert not set(item.views.view_indices.tolist()) & set(sup.view_indices.tolist())


def test_rescaled_cameras_still_see_the_object_where_the_mask_is(procedural_root):
    """The origin is inside every object: at 16 px it must project into the (resized) foreground."""
    ds = MultiviewDataset(procedural_root, "train", num_views=4, num_supervision_views=0, resolution=16)
    item = ds[1]
    pixels, _, _ = item.views.cameras.project(torch.zeros(4, 1, 3))
    torch.testing.assert_close(pixels[:, 0], torch.full((4, 2), 8.0), atol=1e-4, rtol=0)
    full = MultiviewDataset(procedural_root, "train", num_views=4, num_supervision_views=0)
    assert full[1].views.images.shape[-1] == 32  # resolution=None keeps the stored size


def test_masks_follow_alpha_and_match_stored_masks(procedural_root):
    ds = MultiviewDataset(procedural_root, "train", num_views=16, num_supervision_views=0, view_selection="uniform")
    item = ds[0]
    record = ds.records[0]
    stored = torch.stack([load_mask(record.mask_paths[i]) for i in item.views.view_indices.tolist()])
    torch.testing.assert_close(item.views.masks, stored)


def test_uniform_selection_interleaves_views():
    inputs, sup = select_views(16, 8, 8, "uniform", torch.Generator().manual_seed(3))
    assert (torch.diff(torch.sort(inputs).values) == 2).all()
    assert sorted(inputs.tolist() + sup.tolist()) == list(range(16))
    inputs, sup = select_views(16, 4, 4, "uniform", torch.Generator().manual_seed(3))
    assert (torch.diff(torch.sort(inputs).values) == 4).all() and len(set(sup.tolist())) == 4
    with pytest.raises(ValueError, match="need 10 \\+ 8 views"):
        select_views(16, 10, 8, "random", torch.Generator())


def test_items_are_a_function_of_seed_epoch_and_index(procedural_root):
    ds = MultiviewDataset(procedural_root, "train", num_views=4, num_supervision_views=4, resolution=8)
    a, b = ds[2], ds[2]
    assert torch.equal(a.views.view_indices, b.views.view_indices) and torch.equal(a.views.images, b.views.images)
    torch.manual_seed(123)  # global RNG state must not matter
    assert torch.equal(ds[2].views.view_indices, a.views.view_indices)
    epochs = {tuple(ds[2 + e * len(ds)].views.view_indices.tolist()) for e in range(6)}
    assert len(epochs) > 1  # a new epoch draws new views
    other_seed = MultiviewDataset(procedural_root, "train", num_views=4, num_supervision_views=4, resolution=8, seed=1)
    assert any(not torch.equal(other_seed[i].views.view_indices, ds[i].views.view_indices) for i in range(len(ds)))


def test_epoch_sampler_encodes_the_epoch():
    sampler = EpochSampler(5, seed=0)
    first = list(sampler)
    assert sorted(first) == list(range(5)) and list(sampler) == first
    sampler.set_epoch(3)
    third = list(sampler)
    assert sorted(third) == list(range(15, 20)) and [i - 15 for i in third] != first
    assert list(EpochSampler(4, shuffle=False)) == [0, 1, 2, 3]


def test_collate_stacks_cameras(procedural_root):
    ds = MultiviewDataset(procedural_root, "train", num_views=3, num_supervision_views=2, resolution=8)
    batch = collate_multiview([ds[0], ds[1]])
    assert batch.views.images.shape == (2, 3, 3, 8, 8)
    assert batch.views.cameras.shape == (2, 3) and batch.supervision.cameras.shape == (2, 2)
    assert batch.caption == [ds[0].caption, ds[1].caption] or len(batch.caption) == 2
    moved = move_data_to_device(batch, torch.device("cpu"))  # how Lightning moves batches
    assert isinstance(moved.views.cameras, Cameras) and type(moved) is type(batch)


def test_broken_object_raises_or_is_skipped(procedural_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(procedural_root, root)
    broken = sorted((root / "train.txt").read_text().split())[0]
    (root / broken / "caption.txt").write_text("")
    with pytest.raises(DatasetError, match=f"{broken}/caption.txt: caption is empty"):
        MultiviewDataset(root, "train", num_views=4, num_supervision_views=0)
    ds = MultiviewDataset(root, "train", num_views=4, num_supervision_views=0, skip_invalid=True)
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.skipped[0].path.endswith("caption.txt")


def test_unreadable_image_at_load_time(procedural_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(procedural_root, root)
    first = MultiviewDataset(root, "train", num_views=16, num_supervision_views=0).records[0]
    first.image_paths[0].write_bytes(b"not a png")
    ds = MultiviewDataset(root, "train", num_views=16, num_supervision_views=0)
    with pytest.raises(DatasetError, match=r"images/000\.png: image is not readable"):
        ds[0]
    tolerant = MultiviewDataset(root, "train", num_views=16, num_supervision_views=0, skip_invalid=True)
    assert tolerant[0].object_id == tolerant.records[1].object_id


def test_empty_and_too_small_datasets_are_clear_errors(procedural_root, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="split 'train' has no usable objects"):
        MultiviewDataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="has 16 views, need at least 20"):
        MultiviewDataset(procedural_root, num_views=12, num_supervision_views=8)


def test_datamodule_batches(procedural_root):
    dm = MultiviewDataModule(str(procedural_root), num_views=4, num_supervision_views=4, resolution=16, batch_size=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    assert batches[0].views.images.shape == (2, 4, 3, 16, 16) and batches[0].views.cameras.shape == (2, 4)
    val = list(dm.val_dataloader())
    assert sum(len(b.object_id) for b in val) == 2
    again = MultiviewDataModule(str(procedural_root), num_views=4, num_supervision_views=4, resolution=16, batch_size=2)
    assert torch.equal(next(iter(again.train_dataloader())).views.images, batches[0].views.images)


def test_datamodule_without_val_split_and_missing_root(procedural_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(procedural_root, root)
    (root / "train.txt").unlink()
    (root / "val.txt").unlink()
    dm = MultiviewDataModule(str(root), num_views=2, num_supervision_views=0, batch_size=3)
    dm.setup("fit")
    assert len(dm.train_set) == 6 and dm.val_dataloader() == []
    with pytest.raises(DatasetError, match="data root does not exist"):
        MultiviewDataModule(str(tmp_path / "nope")).setup("fit")


def test_data_config_instantiates_through_jsonargparse(procedural_root):
    """configs/data/procedural.yaml is valid for LightningCLI's `data:` section (typed init arguments)."""
    config = yaml.safe_load((REPO / "configs" / "data" / "procedural.yaml").read_text())
    config["init_args"]["root"] = str(procedural_root)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    cfg = parser.parse_object({"data": config})
    dm = parser.instantiate(cfg).data
    assert isinstance(dm, MultiviewDataModule) and dm.hparams.view_selection == "uniform"
    config["init_args"]["view_selection"] = "spiral"
    with pytest.raises(Exception, match="view_selection"):
        parser.parse_object({"data": config})
