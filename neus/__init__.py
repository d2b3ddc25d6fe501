"""tunemv.neus: cameras and rays, and (later) the latent SparseNeuS field, NeuS renderer and mesh extraction."""

from tunemv.neus.cameras import Cameras, orbit

__all__ = ["Cameras", "orbit"]
