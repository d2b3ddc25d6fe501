"""tunemv.adapters: frozen backbones, the control branch, cross-view attention and the MultiviewDenoiser."""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
    "Backbone": "tunemv.adapters.backbones",
    "Text": "tunemv.adapters.text",
    "ModelError": "tunemv.adapters.backbones",
    "ControlBranch": "tunemv.adapters.control_branch",
    "ControlResiduals": "tunemv.adapters.control_branch",
    "CrossViewAttention": "tunemv.adapters.cross_view_attention",
    "CrossViewInputs": "tunemv.adapters.cross_view_attention",
    "MultiviewDenoiser": "tunemv.adapters.denoiser",
    "DenoiserOutput": "tunemv.adapters.denoiser",
    "ModePredictions": "tunemv.adapters.denoiser",
    "MODES": "tunemv.adapters.denoiser",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
