"""Image→multiview: one picture of an object becomes view 0; the adapter generates the rest of the orbit.

    python examples/image_to_multiview.py --image outputs/demo/chairs/00003_chair/images/000.png --prompt "a chair"
"""

import argparse
from pathlib import Path

from tunemv.sampling import MultiviewPipeline

parser = argparse.ArgumentParser()
parser.add_argument("--adapter", default="models/demo-adapter")
parser.add_argument("--image", required=True, help="the reference view, on a white background")
parser.add_argument("--prompt", default="a chair")
parser.add_argument("--elevation", type=float, default=20.0, help="the reference camera's elevation in degrees")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--out", default="outputs/example-image")
args = parser.parse_args()

pipe = MultiviewPipeline.from_pretrained(args.adapter)
out = pipe(args.prompt, num_views=8, reference_images=[args.image], elevation=args.elevation, steps=args.steps,
           guidance_scale=4.0, seed=0)
folder = Path(args.out)
folder.mkdir(parents=True, exist_ok=True)
for index, image in enumerate(out.images[0]):  # view 0 is the reference, unchanged
    image.save(folder / f"view_{index}.png")
print(f"{len(out.images[0])} views in {folder} (view 0 is your image)")
