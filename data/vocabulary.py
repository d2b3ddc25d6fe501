"""The procedural vocabulary: category names and colours. Plain Python, so that ``tunemv --help`` can offer
the categories without importing torch (``data/procedural`` builds the shapes and checks it has a builder
for every name here)."""

from __future__ import annotations

CATEGORIES = ("chair", "table", "stool", "lamp", "mug", "vase", "sphere", "box", "cylinder", "torus", "cone",
              "capsule")

# Distinct, nameable colours (sRGB 0-1). No white: objects are rendered on a white background.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.85, 0.15),
    "lime": (0.55, 0.85, 0.15),
    "green": (0.10, 0.55, 0.20),
    "teal": (0.05, 0.55, 0.55),
    "cyan": (0.20, 0.80, 0.90),
    "blue": (0.15, 0.30, 0.85),
    "navy": (0.08, 0.10, 0.40),
    "purple": (0.50, 0.15, 0.70),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.45, 0.28, 0.12),
    "black": (0.08, 0.08, 0.08),
    "gray": (0.50, 0.50, 0.50),
}
