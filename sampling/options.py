"""A sampler's options are its keyword arguments: check them against its signature, type strings from the
command line by its annotations, and build it, all before any model loads."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from tunemv.sampling.registry import SamplerError, get_sampler

PLAIN_TYPES = (bool, int, float, str, type(None))


def option_parameters(factory: Callable) -> dict[str, inspect.Parameter]:
    """The keyword options ``factory`` accepts (a class: its ``__init__``'s, less ``self``)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return {}
    return {name: p for name, p in parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)}


def describe_options(factory: Callable) -> str:
    names = [name for name, p in option_parameters(factory).items() if p.kind != p.VAR_KEYWORD]
    return ", ".join(names) if names else "none"


def check_options(name: str, factory: Callable, options: Mapping[str, Any]) -> None:
    parameters = option_parameters(factory)
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [key for key in options if key not in parameters]
    if unknown:
        raise SamplerError(f"sampler {name!r} has no option {unknown[0]!r}; its options: {describe_options(factory)}")


def build_sampler(sampler: str | Any, options: Mapping[str, Any] | None = None):
    """A sampler instance: ``sampler`` is a registered name (built with ``options``) or an instance already."""
    options = dict(options or {})
    if not isinstance(sampler, str):
        if options:
            raise SamplerError("sampler_options go with a sampler name; an instance already has its options")
        return sampler
    factory = get_sampler(sampler)
    check_options(sampler, factory, options)
    try:
        return factory(**options)
    except (TypeError, ValueError) as error:  # a bad value: one line naming the sampler
        raise SamplerError(f"sampler {sampler!r}: {error}") from error


def parse_option_strings(name: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["decay=0.8", "two_d_model=path"]`` -> typed options of sampler ``name``, by its annotations.

    A value is read as YAML (0.8, 3, true, none, a string) and must fit the option's annotated plain types
    (bool, int, float, str, None); a string-typed option keeps the text as given.
    """
    factory = get_sampler(name)
    hints = _type_hints(factory)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or not key:
            raise SamplerError(f"--sampler-option expects KEY=VALUE, got {pair!r}")
        check_options(name, factory, {key: None})
        options[key] = _typed(name, key, text, hints.get(key))
    return options


def _type_hints(factory: Callable) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations (names under TYPE_CHECKING): values stay untyped
        return {}


def _allowed(annotation: Any) -> tuple[type, ...]:
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return tuple(member for member in members if member in PLAIN_TYPES)


def _typed(name: str, key: str, text: str, annotation: Any) -> Any:
    allowed = _allowed(annotation) if annotation is not None else ()
    if str in allowed and text.strip().lower() not in ("none", "null", "~"):
        return text  # a path or a schedule's name, exactly as written
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if not allowed:
        return value
    if isinstance(value, bool) and bool not in allowed:
        value = text  # "true" for a float option is an error below, not 1.0
    if isinstance(value, int) and not isinstance(value, bool) and int not in allowed and float in allowed:
        value = float(value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise SamplerError(f"sampler {name!r} option {key!r} expects {names}, got {text!r}")
    return value
