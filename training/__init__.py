"""tunemv.training: the Lightning system, tunemv fit/validate (LightningCLI), export, the latent cache and
validation samples."""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
    "MultiviewAdapterSystem": "tunemv.training.system",
    "NonFiniteLossError": "tunemv.training.system",
    "export_adapter": "tunemv.training.export",
    "LatentCache": "tunemv.training.latent_cache",
    "run_lightning": "tunemv.training.lightning_cli",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
