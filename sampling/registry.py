"""Samplers by name: ``@register_sampler("name")``, ``get_sampler(name)``, ``available_samplers()``.

Samplers come from the entry-point group ``tunemv.samplers``; each entry point names a sampler class (or
factory) and is registered under the entry point's name. tunemv's own built-ins are entry points too (see
its ``pyproject.toml``), so they register exactly as a plugin does and this module imports none of them.
Entry points are loaded lazily, on the first lookup, tunemv's first (a plugin cannot take a built-in's
name); one that fails to import is logged and skipped, so one broken package never breaks sampling. In a
plugin's ``pyproject.toml``::

    [project.entry-points."tunemv.samplers"]
    my-sampler = "my_package.samplers:MySampler"

Code that is not installed as a package can ``@register_sampler("name")`` a class instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from tunemv.errors import TunemvError

ENTRY_POINT_GROUP = "tunemv.samplers"
logger = logging.getLogger(__name__)

_SAMPLERS: dict[str, Callable] = {}
_plugins_loaded = False
T = TypeVar("T", bound=Callable)


class SamplerError(TunemvError, ValueError):
    """An unknown or clashing sampler name."""


def register_sampler(name: str) -> Callable[[T], T]:
    """Class or factory decorator: ``get_sampler(name)`` returns it. A name that is taken raises."""
    if not isinstance(name, str) or not name:
        raise SamplerError(f"a sampler name must be a non-empty string, got {name!r}")

    def decorator(sampler: T) -> T:
        if name in _SAMPLERS and _SAMPLERS[name] is not sampler:
            raise SamplerError(f"sampler name {name!r} is already registered by {_qualname(_SAMPLERS[name])}")
        _SAMPLERS[name] = sampler
        return sampler

    return decorator


def get_sampler(name: str) -> Callable:
    """The sampler registered as ``name``; an unknown name lists the available."""
    load_plugins()
    if name not in _SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    return _SAMPLERS[name]


def registered_name(sampler: Any) -> str:
    """The name a sampler instance's factory is registered under (its class name when it is not)."""
    load_plugins()
    return next((name for name, factory in _SAMPLERS.items() if factory is type(sampler)), type(sampler).__name__)


def available_samplers() -> list[str]:
    load_plugins()
    return sorted(_SAMPLERS)


def load_plugins(force: bool = False) -> None:
    """Register every ``tunemv.samplers`` entry point once (built-ins first); broken ones are logged and skipped."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    # tunemv's own entry points first: the first registration of a name wins
    foreign = lambda point: not point.value.startswith("tunemv.")  # noqa: E731 - tunemv's (False) sort first
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=foreign):
        if entry_point.name in _SAMPLERS:
            continue  # a clash with a built-in or an earlier plugin: the first registration wins
        try:
            sampler = entry_point.load()
        except Exception as error:  # any import-time failure of third-party code
            logger.warning("skipping sampler plugin %r (%s): %s: %s", entry_point.name, entry_point.value,
                           type(error).__name__, error)
            continue
        if not callable(sampler):
            logger.warning("skipping sampler plugin %r (%s): not callable", entry_point.name, entry_point.value)
            continue
        _SAMPLERS[entry_point.name] = sampler


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
