"""The project's own small "3D set": randomised analytic objects with attribute-based captions.

Each builder draws proportions from a numpy ``Generator`` and returns the shape plus the attribute phrases
that describe it ("a tall back", "four thin legs"). Objects are built in a z-up frame with the floor at
z = 0 and the front facing +x, then centred and scaled into a sphere of radius 0.8 (inside the unit
sphere that NeuS uses as its bounds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tunemv.data.sdf import (
    Box,
    Capsule,
    Cone,
    Cylinder,
    Shape,
    SmoothUnion,
    Sphere,
    Subtract,
    Torus,
    Union,
    normalize_to_sphere,
    rotation_matrix,
)
from tunemv.data.vocabulary import CATEGORIES, COLOURS

OBJECT_RADIUS = 0.8


@dataclass
class ProceduralObject:
    category: str
    colour: str
    details: list[str]  # attribute phrases, e.g. ["a tall back", "four thin legs"]
    attributes: dict[str, str]  # machine-readable attributes, e.g. {"back": "tall", "legs": "thin"}
    shape: Shape  # normalised into the sphere of radius OBJECT_RADIUS

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    @property
    def captions(self) -> list[str]:
        return make_captions(self.category, self.colour, self.details)


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_captions(category: str, colour: str, details: list[str]) -> list[str]:
    """The caption first, then alternative phrasings of the same attributes."""
    coloured = f"{_article(colour)} {colour} {category}"
    if not details:
        return [coloured, f"{_article(category)} {category} in {colour}", f"a 3D render of {coloured}"]
    return [
        f"{coloured} with {_join(details)}",
        f"{_article(category)} {category} in {colour}, with {_join(details[::-1])}",
        f"a 3D render of {coloured}",
    ]


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _legs(corners: list[tuple[float, float]], top: float, thickness: float, round_legs: bool) -> list[Shape]:
    half = top / 2
    if round_legs:
        return [Cylinder(thickness / 2, half, (x, y, half)) for x, y in corners]
    return [Box((thickness / 2, thickness / 2, half), (x, y, half)) for x, y in corners]


# ------------------------------------------------------------------------------------------ categories
def build_chair(rng):
    width, depth = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)
    seat_height, seat_thickness = rng.uniform(0.4, 0.6), rng.uniform(0.05, 0.1)
    thin = rng.random() < 0.5
    leg = rng.uniform(0.035, 0.05) if thin else rng.uniform(0.08, 0.11)
    tall = rng.random() < 0.5
    back_height = rng.uniform(0.7, 0.95) if tall else rng.uniform(0.3, 0.45)
    arms = rng.random() < 0.35
    round_legs = rng.random() < 0.4
    inset_x, inset_y = depth / 2 - leg, width / 2 - leg
    corners = [(sx * inset_x, sy * inset_y) for sx in (-1, 1) for sy in (-1, 1)]
    parts = _legs(corners, seat_height, leg, round_legs)
    parts.append(Box((depth / 2, width / 2, seat_thickness / 2), (0, 0, seat_height + seat_thickness / 2), 0.01))
    back_thickness = rng.uniform(0.05, 0.08)
    top = seat_height + seat_thickness
    parts.append(Box((back_thickness / 2, width / 2, back_height / 2), (-depth / 2 + back_thickness / 2, 0, top + back_height / 2), 0.01))
    if arms:
        arm_height = 0.25
        for sy in (-1, 1):
            parts.append(Box((depth / 2, 0.03, 0.025), (0, sy * (width / 2 - 0.03), top + arm_height), 0.01))
            parts.append(Box((0.025, 0.025, arm_height / 2), (depth / 2 - 0.05, sy * (width / 2 - 0.03), top + arm_height / 2)))
    details = [f"a {'tall' if tall else 'short'} back", f"four {'thin' if thin else 'thick'} {'round ' if round_legs else ''}legs"]
    if arms:
        details.append("armrests")
    attributes = {"back": "tall" if tall else "short", "legs": "thin" if thin else "thick", "arms": str(arms).lower()}
    return Union(*parts), details, attributes


def build_table(rng):
    round_top = rng.random() < 0.4
    low = rng.random() < 0.35
    height = rng.uniform(0.35, 0.5) if low else rng.uniform(0.7, 0.85)
    length, width, top_thickness = rng.uniform(1.0, 1.6), rng.uniform(0.7, 1.0), rng.uniform(0.05, 0.1)
    pedestal = rng.random() < (0.6 if round_top else 0.2)
    if round_top:
        radius = rng.uniform(0.5, 0.75)
        top = Cylinder(radius, top_thickness / 2, (0, 0, height - top_thickness / 2))
        corners = [(radius * 0.65 * np.cos(a), radius * 0.65 * np.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
    else:
        top = Box((length / 2, width / 2, top_thickness / 2), (0, 0, height - top_thickness / 2), 0.01)
        leg_inset = 0.06
        corners = [(sx * (length / 2 - leg_inset), sy * (width / 2 - leg_inset)) for sx in (-1, 1) for sy in (-1, 1)]
    legs_height = height - top_thickness
    if pedestal:
        column = rng.uniform(0.05, 0.09)
        support = [Cylinder(column, legs_height / 2, (0, 0, legs_height / 2)),
                   Cylinder(rng.uniform(0.25, 0.4), 0.025, (0, 0, 0.025))]
    else:
        support = _legs(corners, legs_height, rng.uniform(0.05, 0.09), round_legs=rng.random() < 0.5)
    details = [f"a {'round' if round_top else 'rectangular'} top", "a central pedestal" if pedestal else "four legs"]
    attributes = {"top": "round" if round_top else "rectangular", "support": "pedestal" if pedestal else "legs",
                  "height": "low" if low else "tall"}
    details.insert(0, "a low frame" if low else "a tall frame")
    return Union(top, *support), details, attributes


def build_stool(rng):
    three = rng.random() < 0.5
    tall = rng.random() < 0.5
    height = rng.uniform(0.75, 0.95) if tall else rng.uniform(0.4, 0.55)
    seat_radius, seat_thickness = rng.uniform(0.25, 0.38), rng.uniform(0.05, 0.09)
    leg_radius = rng.uniform(0.025, 0.045)
    footrest = tall and rng.random() < 0.6
    angles = np.deg2rad(np.arange(3 if three else 4) * (120 if three else 90) + 45)
    splay = rng.uniform(1.0, 1.35)
    parts: list[Shape] = [Cylinder(seat_radius, seat_thickness / 2, (0, 0, height - seat_thickness / 2))]
    r_top = seat_radius * 0.75
    for a in angles:
        top = (r_top * np.cos(a), r_top * np.sin(a), height - seat_thickness)
        bottom = (r_top * splay * np.cos(a), r_top * splay * np.sin(a), leg_radius)
        parts.append(Capsule(top, bottom, leg_radius))
    if footrest:
        z = height * 0.35
        ring = r_top * (1 + (splay - 1) * (1 - z / height))
        parts.append(Torus(ring, leg_radius * 0.8, (0, 0, z)))
    details = [f"{'three' if three else 'four'} legs"] + (["a footrest ring"] if footrest else [])
    details.insert(0, "a tall frame" if tall else "a short frame")
    attributes = {"legs": "three" if three else "four", "height": "tall" if tall else "short", "footrest": str(footrest).lower()}
    return Union(*parts), details, attributes


def build_lamp(rng):
    globe = rng.random() < 0.3
    square_base = rng.random() < 0.4
    tall = rng.random() < 0.5
    pole_height = rng.uniform(1.1, 1.5) if tall else rng.uniform(0.5, 0.75)
    base = (Box((0.18, 0.18, 0.03), (0, 0, 0.03), 0.01) if square_base else Cylinder(rng.uniform(0.15, 0.25), 0.03, (0, 0, 0.03)))
    pole = Cylinder(rng.uniform(0.02, 0.035), pole_height / 2, (0, 0, pole_height / 2))
    if globe:
        radius = rng.uniform(0.18, 0.28)
        shade: Shape = Sphere(radius, (0, 0, pole_height + radius * 0.8))
    else:
        bottom, top, half = rng.uniform(0.25, 0.38), rng.uniform(0.1, 0.2), rng.uniform(0.12, 0.2)
        outer = Cone(bottom, top, half, (0, 0, pole_height))
        inner = Cone(bottom - 0.02, top - 0.02, half + 0.01, (0, 0, pole_height - 0.02))
        shade = Union(Subtract(outer, inner), Sphere(0.05, (0, 0, pole_height)))
    details = ["a globe shade" if globe else "a cone shade", f"a {'square' if square_base else 'round'} base"]
    details.insert(0, "a tall stand" if tall else "a short stand")
    attributes = {"shade": "globe" if globe else "cone", "base": "square" if square_base else "round", "height": "tall" if tall else "short"}
    return Union(base, pole, shade), details, attributes


def build_mug(rng):
    tall = rng.random() < 0.5
    radius = rng.uniform(0.25, 0.32) if tall else rng.uniform(0.35, 0.45)
    height = rng.uniform(0.75, 0.95) if tall else rng.uniform(0.45, 0.6)
    wall = rng.uniform(0.03, 0.05)
    body = Cylinder(radius, height / 2, (0, 0, height / 2))
    hollow = Cylinder(radius - wall, height / 2, (0, 0, height / 2 + wall))
    handle_size = rng.uniform(0.13, 0.2)
    handle = Torus(handle_size, rng.uniform(0.025, 0.04), (0, radius + handle_size * 0.5, height / 2), rotation_matrix("y", 90))
    handle = Subtract(handle, Cylinder(radius - wall / 2, height / 2, (0, 0, height / 2)))
    details = ["a handle", "a tall narrow body" if tall else "a short wide body"]
    attributes = {"body": "tall" if tall else "wide"}
    return Union(Subtract(body, hollow), handle), details, attributes


def build_vase(rng):
    slender = rng.random() < 0.5
    long_neck = rng.random() < 0.5
    flared = rng.random() < 0.5
    body_radius = rng.uniform(0.22, 0.3) if slender else rng.uniform(0.35, 0.45)
    if slender:
        body_height = rng.uniform(0.6, 0.8)
        body: Shape = Capsule((0, 0, body_radius), (0, 0, body_height), body_radius)
        body_top = body_height + body_radius * 0.6
    else:
        body = Sphere(body_radius, (0, 0, body_radius))
        body_top = body_radius * 1.8
    neck_height = rng.uniform(0.35, 0.5) if long_neck else rng.uniform(0.1, 0.18)
    neck_radius = rng.uniform(0.08, 0.12)
    neck_top = body_top + neck_height
    neck = Cylinder(neck_radius, neck_height / 2 + 0.05, (0, 0, body_top + neck_height / 2 - 0.05))
    shape: Shape = SmoothUnion(body, neck, 0.08)
    if flared:
        shape = SmoothUnion(shape, Cone(neck_radius, neck_radius * 2.0, 0.06, (0, 0, neck_top)), 0.03)
    else:
        shape = Union(shape, Torus(neck_radius, 0.025, (0, 0, neck_top)))
    shape = Subtract(shape, Cylinder(neck_radius - 0.03, 0.3, (0, 0, neck_top + 0.2)))
    details = [f"a {'slender' if slender else 'round'} body", f"a {'long' if long_neck else 'short'} neck"]
    if flared:
        details.append("a flared lip")
    attributes = {"body": "slender" if slender else "round", "neck": "long" if long_neck else "short", "lip": "flared" if flared else "plain"}
    return shape, details, attributes


# ------------------------------------------------------------------------------------------ primitives
def build_sphere(rng):
    return Sphere(0.5), [], {}


def build_box(rng):
    kind = _choice(rng, ["cube", "flat", "tall"])
    half = {"cube": (0.4, 0.4, 0.4), "flat": (0.5, 0.4, rng.uniform(0.08, 0.15)), "tall": (0.2, 0.2, rng.uniform(0.5, 0.7))}[kind]
    rounded = rng.random() < 0.4
    details = [{"cube": "equal sides", "flat": "a flat shape", "tall": "a tall shape"}[kind]]
    if rounded:
        details.append("rounded edges")
    shape = Box(half, rounding=0.06 if rounded else 0.0, rotation=rotation_matrix("z", rng.uniform(0, 90)))
    return shape, details, {"shape": kind, "edges": "rounded" if rounded else "sharp"}


def build_cylinder(rng):
    tall = rng.random() < 0.5
    shape = Cylinder(0.15, 0.6) if tall else Cylinder(0.5, rng.uniform(0.1, 0.2))
    return shape, ["a tall thin shape" if tall else "a short wide shape"], {"shape": "tall" if tall else "wide"}


def build_torus(rng):
    thick = rng.random() < 0.5
    upright = rng.random() < 0.5
    rotation = rotation_matrix("z", rng.uniform(0, 180)) @ rotation_matrix("x", 90) if upright else None
    shape = Torus(0.5, 0.2 if thick else 0.08, rotation=rotation)
    details = ["a thick ring" if thick else "a thin ring", "an upright pose" if upright else "a flat pose"]
    return shape, details, {"ring": "thick" if thick else "thin", "pose": "upright" if upright else "flat"}


def build_cone(rng):
    tall = rng.random() < 0.5
    shape = Cone(0.3, 0.0, 0.6) if tall else Cone(0.6, 0.0, 0.3)
    return shape, ["a tall point" if tall else "a wide base"], {"shape": "tall" if tall else "wide"}


def build_capsule(rng):
    upright = rng.random() < 0.5
    length, radius = rng.uniform(0.4, 0.7), rng.uniform(0.15, 0.3)
    a, b = ((0, 0, -length / 2), (0, 0, length / 2)) if upright else ((-length / 2, 0, 0), (length / 2, 0, 0))
    details = ["an upright pose" if upright else "a sideways pose"]
    return Capsule(a, b, radius), details, {"pose": "upright" if upright else "side"}


BUILDERS: dict[str, Callable] = {
    "chair": build_chair, "table": build_table, "stool": build_stool, "lamp": build_lamp, "mug": build_mug,
    "vase": build_vase, "sphere": build_sphere, "box": build_box, "cylinder": build_cylinder, "torus": build_torus,
    "cone": build_cone, "capsule": build_capsule,
}
if tuple(BUILDERS) != CATEGORIES:  # the CLI offers vocabulary.CATEGORIES without importing this module
    raise RuntimeError(f"data/vocabulary.py CATEGORIES {CATEGORIES} != the builders {tuple(BUILDERS)}")


def make_object(category: str, rng: np.random.Generator, colour: str | None = None) -> ProceduralObject:
    """A random object of ``category``; the colour is drawn from ``COLOURS`` unless given."""
    if category not in BUILDERS:
        raise ValueError(f"unknown category {category!r}; available: {', '.join(CATEGORIES)}")
    colour = colour or _choice(rng, list(COLOURS))
    shape, details, attributes = BUILDERS[category](rng)
    return ProceduralObject(category, colour, details, attributes, normalize_to_sphere(shape, OBJECT_RADIUS))
