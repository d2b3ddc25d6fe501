"""tunemv: adapters that make a frozen 2D text-to-image diffusion model generate consistent multiview images.

The public API is re-exported here lazily, so ``import tunemv`` (and the CLI's ``--help``) stays fast and
nothing heavy runs at import time.
"""

from tunemv._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "Cameras": "tunemv.geometry.cameras",
    "orbit": "tunemv.geometry.cameras",
    "LatentSparseNeuS": "tunemv.neus.latent_sparseneus",
    "NeuSLoss": "tunemv.neus.losses",
    "extract_mesh": "tunemv.neus.mesh",
    "export_mesh": "tunemv.neus.mesh",
    "Backbone": "tunemv.adapters.backbones",
    "ControlBranch": "tunemv.adapters.control_branch",
    "MultiviewDenoiser": "tunemv.adapters.denoiser",
    "MultiviewPipeline": "tunemv.sampling.pipeline",
    "register_sampler": "tunemv.sampling.registry",
    "get_sampler": "tunemv.sampling.registry",
    "available_samplers": "tunemv.sampling.registry",
    "MultiviewDataset": "tunemv.data.dataset",
    "MultiviewDataModule": "tunemv.data.datamodule",
    "check_dataset": "tunemv.data.check",
    "import_transforms": "tunemv.data.importers",
    "generate_procedural_dataset": "tunemv.data.generate",
    "evaluate_dataset": "tunemv.evaluation.evaluate",
    "EvaluationReport": "tunemv.evaluation.report",
    "TunemvError": "tunemv.errors",
    "DatasetError": "tunemv.errors",
    "CameraError": "tunemv.errors",
    "ModelError": "tunemv.adapters.backbones",
    "AttributeClassifier": "tunemv.evaluation.attribute_classifier",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__ = lazy_getattr(__name__, _EXPORTS)
