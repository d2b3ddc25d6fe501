"""The on-disk latent cache: a hit equals a fresh encoding, each view is encoded once, keys follow the size."""

import torch
from tiny_pipelines import tiny_sd

from tunemv.adapters.backbones import Backbone
from tunemv.training.latent_cache import LatentCache
from tunemv.training.system import MultiviewAdapterSystem


def test_cached_latents_equal_fresh_ones_and_are_encoded_once(tmp_path):
    tiny_sd().save_pretrained(tmp_path / "sd")
    backbone = Backbone.from_pretrained(tmp_path / "sd")
    cache = LatentCache(tmp_path / "cache", backbone)
    images = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    views = torch.tensor([[0, 1, 2], [0, 5, 7]])
    first = cache.encode(images, ["a", "b"], views)
    fresh = backbone.encode_views(images)
    torch.testing.assert_close(first, fresh, atol=1e-5, rtol=1e-5)
    assert (cache.misses, cache.hits) == (6, 0)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 6
    second = cache.encode(images, ["a", "b"], views)
    assert torch.equal(second, first) and (cache.misses, cache.hits) == (6, 6)
    # A cached view is read back, not re-encoded: changed pixels under the same key keep the stored latent.
    assert torch.equal(cache.encode(images.flip(-1)[:1, :1], ["a"], views[:1, :1]), first[:1, :1])
    # Another image size is another cache folder.
    small = torch.nn.functional.interpolate(images.flatten(0, 1), size=16).unflatten(0, (2, 3))
    cache.encode(small, ["a", "b"], views)
    assert len({p.parent.parent for p in (tmp_path / "cache").rglob("*.safetensors")}) == 2

    system = MultiviewAdapterSystem(str(tmp_path / "sd"), latent_cache_dir=str(tmp_path / "cache"))
    torch.testing.assert_close(system.encode_views(images, ["a", "b"], views), fresh, atol=1e-5, rtol=1e-5)
    assert system.latent_cache.hits == 6 and system.latent_cache.misses == 0  # the same backbone: same folder
