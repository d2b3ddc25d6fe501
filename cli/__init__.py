"""The roof: the ``tunemv`` command (``commands``), ``tunemv sample`` (``sample``), the demo and the web app.

Nothing in the library imports this package; it imports every part below it. Heavy imports happen inside
the command handlers, so ``tunemv --help`` stays fast.
"""

from tunemv.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
