"""tunemv.geometry: the ground floor. Cameras and orbits, projection into maps, ray bounds, isosurfaces; imports no other part."""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
    "Cameras": "tunemv.geometry.cameras",
    "orbit": "tunemv.geometry.cameras",
    "bilinear_sample": "tunemv.geometry.projection",
    "project_to_maps": "tunemv.geometry.projection",
    "near_far_from_sphere": "tunemv.geometry.rays",
    "sdf_lattice": "tunemv.geometry.isosurface",
    "marching_cubes": "tunemv.geometry.isosurface",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
