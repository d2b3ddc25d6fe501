"""tunemv.sampling: prediction algebra, guidance, samplers and their registry, MultiviewPipeline."""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
    "MultiviewPipeline": "tunemv.sampling.pipeline",
    "MultiviewPipelineOutput": "tunemv.sampling.pipeline",
    "MultiviewField": "tunemv.sampling.multiview_field",
    "SamplingJob": "tunemv.sampling.denoising_loop",
    "SamplingResult": "tunemv.sampling.denoising_loop",
    "denoise": "tunemv.sampling.denoising_loop",
    "GuidedSampler": "tunemv.sampling.samplers",
    "MixSchedule": "tunemv.sampling.guidance",
    "register_sampler": "tunemv.sampling.registry",
    "get_sampler": "tunemv.sampling.registry",
    "available_samplers": "tunemv.sampling.registry",
    "make_scheduler": "tunemv.sampling.schedulers",
    "available_schedulers": "tunemv.sampling.schedulers",
    "to_epsilon": "tunemv.sampling.algebra",
    "from_epsilon": "tunemv.sampling.algebra",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
