"""Text→multiview with a fitted adapter (or a distilled generator): views, a turntable and a mesh.

    python examples/text_to_multiview.py --adapter models/demo-adapter --prompt "a red chair" --out outputs/example
"""

import argparse
from pathlib import Path

from tunemv.sampling import MultiviewPipeline

parser = argparse.ArgumentParser()
parser.add_argument("--adapter", default="models/demo-adapter", help="adapter or generator folder, or a hub id")
parser.add_argument("--prompt", default="a red chair")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--out", default="outputs/example-text")
args = parser.parse_args()

pipe = MultiviewPipeline.from_pretrained(args.adapter)
out = pipe(args.prompt, num_views=8, steps=args.steps, guidance_scale=4.0, seed=0)  # its folder's sampler
folder = Path(args.out)
folder.mkdir(parents=True, exist_ok=True)
for index, image in enumerate(out.images[0]):  # PIL images, as diffusers returns them
    image.save(folder / f"view_{index}.png")
out.field.mesh(0, resolution=64, views=out.pixels[0]).export(folder / "mesh.glb")
print(f"seed {out.seed}: {len(out.images[0])} views and mesh.glb in {folder}")
