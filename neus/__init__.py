"""tunemv.neus: cameras and rays, the latent SparseNeuS field, the NeuS renderer and mesh extraction."""

from importlib import import_module

_EXPORTS = {
    "Cameras": "tunemv.neus.cameras",
    "orbit": "tunemv.neus.cameras",
    "LatentSparseNeuS": "tunemv.neus.latent_sparseneus",
    "LatentSparseNeuSOutput": "tunemv.neus.latent_sparseneus",
    "ConditionedField": "tunemv.neus.latent_sparseneus",
    "NeuSLoss": "tunemv.neus.losses",
    "AnalyticField": "tunemv.neus.renderer",
    "RaySamplingConfig": "tunemv.neus.renderer",
    "render_views": "tunemv.neus.renderer",
    "extract_mesh": "tunemv.neus.mesh",
    "vertex_colors": "tunemv.neus.mesh",
    "colored_mesh": "tunemv.neus.mesh",
    "export_mesh": "tunemv.neus.mesh",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunemv.neus' has no attribute {name!r}")
