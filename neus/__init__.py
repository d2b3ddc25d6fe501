"""tunemv.neus: the latent SparseNeuS field, its ray samplers, the NeuS renderer and mesh extraction."""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
