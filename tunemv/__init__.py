"""tunemv: adapters that make a frozen 2D text-to-image diffusion model generate consistent multiview images.

The public API is re-exported here lazily, so ``import tunemv`` (and the CLI's ``--help``) stays fast and
nothing heavy runs at import time.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Cameras": "tunemv.neus.cameras",
    "orbit": "tunemv.neus.cameras",
    "LatentSparseNeuS": "tunemv.neus.latent_sparseneus",
    "NeuSLoss": "tunemv.neus.losses",
    "extract_mesh": "tunemv.neus.mesh",
    "export_mesh": "tunemv.neus.mesh",
    "MultiviewDataset": "tunemv.data.dataset",
    "MultiviewDataModule": "tunemv.data.datamodule",
    "check_dataset": "tunemv.data.check",
    "import_transforms": "tunemv.data.importers",
    "generate_procedural_dataset": "tunemv.data.generate",
    "TunemvError": "tunemv.errors",
    "DatasetError": "tunemv.errors",
    "CameraError": "tunemv.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunemv' has no attribute {name!r}")
