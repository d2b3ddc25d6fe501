"""How much do the adapter, and the camera, move the backbone's prediction at a given noise level?

    python experiments/camera_probe.py outputs/camera/adapters/none outputs/camera/adapters/plucker

For 8 views of one prompt from one seed at t = 950, 600 and 200: the mean |ε_mv − ε_2d| (the whole adapter's
effect) and the mean |ε_mv(cameras) − ε_mv(cameras turned by 180°)| (the camera's effect, through the field,
the cross-view attention and any camera conditioning). A camera signal that does not move ε at high noise
cannot set the pose, which is settled there.
"""

from __future__ import annotations

import argparse

import torch

from tunemv.adapters.text import Text
from tunemv.geometry.cameras import Cameras, orbit
from tunemv.sampling.pipeline import MultiviewPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("--prompt", default="a red chair")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[950, 600, 200])
    args = parser.parse_args()
    for name in args.adapters:
        pipe = MultiviewPipeline.from_pretrained(name)
        size = pipe.backbone.image_resolution
        text = Text(pipe.backbone.encode_prompt([args.prompt]).hidden_states.float())
        x = torch.randn(1, 8, pipe.backbone.in_channels, size, size, generator=torch.Generator().manual_seed(0))
        front = Cameras.stack([orbit(8, 20.0, resolution=size)])
        turned = Cameras.stack([orbit(8, 20.0, resolution=size, azimuth_start_deg=180.0)])
        for t in args.timesteps:
            timesteps = torch.full((1, 8), t)
            with torch.no_grad():
                first = pipe.denoiser.predict(x, timesteps, front, text, modes=("mv", "2d")).cond
                second = pipe.denoiser.predict(x, timesteps, turned, text, modes=("mv",)).cond
            adapter = float((first["mv"] - first["2d"]).abs().mean())
            camera = float((first["mv"] - second["mv"]).abs().mean())
            print(f"{name} t={t}: adapter effect {adapter:.5f}, camera effect {camera:.5f}", flush=True)


if __name__ == "__main__":
    main()
