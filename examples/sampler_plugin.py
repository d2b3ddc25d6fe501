"""A sampler plugin with its own option: consistency guidance whose scale decays over the steps.

Run as a script, it registers the sampler in its own process with ``register_sampler`` and samples with it:

    python examples/sampler_plugin.py --adapter models/demo-adapter --decay 0.8

That registration lives and dies with this process: ``tunemv sample`` runs in another one and cannot see it.
For ``tunemv sample`` (and the app, and every other process) to find the sampler, ship this module in a package
that declares it in the ``tunemv.samplers`` entry-point group, e.g. as ``my_package/samplers.py`` with, in
``my_package``'s ``pyproject.toml``:

    [project.entry-points."tunemv.samplers"]
    decaying = "my_package.samplers:DecayingConsistency"

then ``pip install my_package`` (or ``pip install -e .``), and

    tunemv sample --adapter models/demo-adapter --prompt "a red chair" --sampler decaying --sampler-option decay=0.8

finds it (entry points load on the first sampler lookup; README: Writing a sampler plugin).
tests/test_examples.py installs this very file that way and runs ``tunemv sample`` with it.
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
        self.decay = decay

    def consistency_scale_at(self, step):  # a sampler keeps no state: the step says where the run is
        return self.consistency_scale * self.decay**step.index


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
