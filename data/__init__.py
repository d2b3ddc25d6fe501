"""tunemv.data: the dataset format, validation, importers, procedural objects and the DataModule.

Names are imported lazily so that ``tunemv data check`` does not pay for importing Lightning.
"""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
    "MultiviewDataset": "tunemv.data.dataset",
    "collate_multiview": "tunemv.data.batch",
    "MultiviewItem": "tunemv.data.batch",
    "ViewSet": "tunemv.data.batch",
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

__getattr__ = lazy_getattr(__name__, _EXPORTS)
