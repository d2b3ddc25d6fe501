"""FID and KID (torchmetrics) between all generated and all reference views, when Inception weights exist.

torchmetrics takes its Inception-v3 from torch-fidelity, which downloads the weights on first use. Offline
that download fails (slowly), so the weights file is looked up first: ``inception`` (a path to
``pt_inception-2015-12-05-6726825d.pth``) or torch-fidelity's own cache under ``torch.hub.get_dir()``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from tunemv.evaluation.availability import unavailable

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's URL_INCEPTION_V3 file name


def load_inception(weights: str | os.PathLike | None = None):
    """torchmetrics' ``NoTrainInceptionV3`` (2048-d pool features), else an "unavailable: ..." string."""
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception lives there)
    except ImportError:
        return unavailable("FID/KID need torch-fidelity (pip install torch-fidelity), which is not installed")
    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        return unavailable(f"Inception weights not found at {path}")
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(path))


class DistributionMetrics:
    """Accumulates Inception features object by object (views of any size); ``compute`` gives FID and KID.

    Features, not images, are kept (2048 floats a view), and torchmetrics gets them through an identity
    "feature extractor", so objects at different resolutions mix and memory stays small.
    """

    def __init__(self, inception):
        self.inception = inception
        self.generated: list[torch.Tensor] = []
        self.reference: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, generated: torch.Tensor, reference: torch.Tensor) -> None:
        """(N, 3, H, W) images in [0, 1]; the Inception network takes uint8 and resizes to 299 itself."""
        if isinstance(self.inception, str):
            return
        self.generated.append(self.inception((generated * 255).round().to(torch.uint8)).reshape(len(generated), -1))
        self.reference.append(self.inception((reference * 255).round().to(torch.uint8)).reshape(len(reference), -1))

    @torch.no_grad()
    def compute(self) -> dict[str, float | str]:
        if isinstance(self.inception, str):
            return dict.fromkeys(("fid", "kid_mean", "kid_std"), self.inception)
        generated = torch.cat(self.generated) if self.generated else torch.zeros(0)
        reference = torch.cat(self.reference) if self.reference else torch.zeros(0)
        if min(len(generated), len(reference)) < 2:
            return dict.fromkeys(("fid", "kid_mean", "kid_std"),
                                 unavailable("FID/KID need at least 2 generated and 2 reference views"))
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        features = _Precomputed(generated.shape[-1])
        fid = FrechetInceptionDistance(feature=features)
        with warnings.catch_warnings():  # "KID will save all extracted features": here they are 2048 floats a view
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=features, subset_size=min(1000, len(generated), len(reference)))
        for metric in (fid, kid):
            metric.update(reference, real=True)
            metric.update(generated, real=False)
        kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


class _Precomputed(nn.Module):
    """The identity, posing as torchmetrics' feature extractor for features computed already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
