"""What a normal run prints, cut to what a user needs: expected warnings and adverts are dropped here, once,
for every command. Warnings that signal a real problem are left alone.

Plain ``warnings``/``logging`` set-up only, so the CLI can call it before any heavy import.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, why it is expected)
EXPECTED_WARNINGS = (
    # The frozen backbone (and a frozen NeuS, ``train_neus: false``) stay in eval mode on purpose.
    (r"Found \d+ module\(s\) in eval mode", "frozen parts are in eval mode by design"),
    # Lightning 2.6 calls a pytree API that torch 2.13 deprecates; nothing a user can change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "Lightning's own use of a torch API"),
)
ADVERTS = ("💡 Tip:",)  # Lightning's messages about its cloud products, at the start of every fit
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTS)


def silence_expected_noise() -> None:
    """Ignore ``EXPECTED_WARNINGS`` and drop ``ADVERTS``; idempotent."""
    for pattern, _why in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropAdverts) for existing in logger.filters):
            logger.addFilter(_DropAdverts())
