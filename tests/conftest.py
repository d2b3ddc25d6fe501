"""Seeded, deterministic tests; shared tiny datasets are built once per session."""

from __future__ import annotations

import logging
import os
import random
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # as `tunemv fit` on CPU: denormal floats made NeuS steps 2x slower
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def procedural_root(tmp_path_factory):
    """6 procedural objects (chair, table, mug x2) with 16 views at 32x32 and a val split; read-only for tests."""
    from tunemv.data.generate import generate_procedural_dataset

    root = tmp_path_factory.mktemp("procedural")
    generate_procedural_dataset(root, num_objects=6, num_views=16, resolution=32, categories=["chair", "table", "mug"],
                                seed=7, val_fraction=0.34, workers=1, progress=False)
    return root


@pytest.fixture
def library_logs_to_stderr(monkeypatch):
    """Library log handlers (Lightning's, diffusers') keep the sys.stderr of their creation, which may be an
    earlier test's closed capsys stream; point them at the process's stderr."""
    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for handler in {h for logger in loggers for h in logger.handlers if type(h) is logging.StreamHandler}:
        monkeypatch.setattr(handler, "stream", sys.__stderr__)
