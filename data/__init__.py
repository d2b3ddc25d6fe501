"""tunemv.data: the dataset format, validation, importers, procedural objects and the DataModule.

Names are imported lazily so that ``tunemv data check`` does not pay for importing Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "MultiviewDataset": "tunemv.data.dataset",
    "collate_multiview": "tunemv.data.dataset",
    "MultiviewDataModule": "tunemv.data.datamodule",
    "check_dataset": "tunemv.data.check",
    "inspect_object": "tunemv.data.format",
    "read_object": "tunemv.data.format",
    "write_object": "tunemv.data.format",
    "list_objects": "tunemv.data.format",
    "import_transforms": "tunemv.data.importers",
    "generate_procedural_dataset": "tunemv.data.generate",
    "make_object": "tunemv.data.procedural",
    "render_sdf": "tunemv.data.render",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunemv.data' has no attribute {name!r}")
