"""tunemv.evaluation: model-free multiview consistency, fidelity and (where weights exist) alignment metrics."""
