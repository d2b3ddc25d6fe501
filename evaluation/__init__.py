"""tunemv.evaluation: model-free multiview consistency, fidelity and (where weights exist) alignment metrics.

See evaluation/README.md for what each metric means and the calibration numbers behind the thresholds.
"""

from tunemv._lazy import lazy_getattr

_EXPORTS = {
    "evaluate_dataset": "tunemv.evaluation.evaluate",
    "EvaluationReport": "tunemv.evaluation.report",
    "ObjectResult": "tunemv.evaluation.report",
    "load_views": "tunemv.evaluation.views",
    "carve_visual_hull": "tunemv.evaluation.hull",
    "render_hull": "tunemv.evaluation.hull",
    "silhouette_iou": "tunemv.evaluation.hull",
    "photo_consistency": "tunemv.evaluation.photo",
    "fit_and_reproject": "tunemv.evaluation.mvc",
    "fidelity": "tunemv.evaluation.fidelity",
    "mesh_accuracy": "tunemv.evaluation.mesh_accuracy",
    "chamfer_distance": "tunemv.evaluation.mesh_accuracy",
    "volume_iou": "tunemv.evaluation.mesh_accuracy",
    "is_unavailable": "tunemv.evaluation.availability",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
