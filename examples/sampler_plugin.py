"""A sampler plugin with its own option: consistency guidance whose scale decays over the steps.

A package registers it with an entry point (README: Writing a sampler plugin); a script can use
``register_sampler`` as here. ``tunemv sample --sampler decaying --sampler-option decay=0.8`` then reaches it.

    python examples/sampler_plugin.py --adapter models/demo-adapter --decay 0.8
"""

import argparse

from tunemv.sampling import MultiviewPipeline
from tunemv.sampling.registry import register_sampler
from tunemv.sampling.samplers import ConsistencySampler


@register_sampler("decaying")
class DecayingConsistency(ConsistencySampler):
    """Consistency guidance (TuneMV3D §3.3) at α·decay^step: strong while the shape forms, gentle at the end."""

    def __init__(self, decay: float = 0.9, consistency_scale: float = 7.5, consistency_ratio: float = 0.5):
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        super().__init__(consistency_scale=consistency_scale, consistency_ratio=consistency_ratio)
        self.decay, self.base_scale = decay, consistency_scale

    def combine(self, job, cond, uncond, timestep, step_index):
        self.consistency_scale = self.base_scale * self.decay**step_index
        return super().combine(job, cond, uncond, timestep, step_index)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default="models/demo-adapter")
    parser.add_argument("--decay", type=float, default=0.8)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    pipe = MultiviewPipeline.from_pretrained(args.adapter)
    out = pipe("a red chair", num_views=4, sampler="decaying", sampler_options={"decay": args.decay},
               steps=args.steps, seed=0, output_type="pt")
    print(f"sampled {tuple(out.images.shape)} with the 'decaying' sampler, decay {args.decay}")
