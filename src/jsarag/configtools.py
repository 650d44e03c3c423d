"""Typed configuration machinery: dataclass trees from YAML and dotted overrides, and back.

Config classes are plain dataclasses (inert data). This module turns nested dicts into them with
type checking, so that a mistake in a YAML file or on the command line is reported as one line that
names the key, e.g. ``optim.lr_generator: expected a float, got 'fast'``. A section whose fields are
known only at run time (the estimator's: one per registered estimator) declares a classmethod
``config_class()`` that returns the dataclass to build in its place (see ``config_class``).
"""

from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class ConfigError(ValueError):
    """A configuration mistake: unknown key, wrong type, bad value. The message is one line: line breaks
    in the user's text that it quotes (a key, an override) are escaped."""

    def __init__(self, message: str):
        super().__init__(str(message).translate(_LINE_BREAKS))


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else type(value).__name__


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(tp: Any, value: Any, key: str, from_text: bool) -> Any:
    """Check ``value`` against type ``tp``; strings are parsed when they come from the command line,
    and numbers written like ``1e-5`` (a string to YAML 1.1) are accepted for float fields."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None or (from_text and isinstance(value, str) and value.lower() in {"null", "none"}):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key, from_text)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {_describe(value)} matches none of {tp}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if from_text and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: expected a list like [a, b], got {_describe(value)}") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]", from_text) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]", from_text) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and from_text and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text or isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    raise TypeError(f"unsupported config type {tp} for {key}")


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric field: an interval, closed unless said otherwise. NaN is never in
    range, nor is an infinity unless ``infinite`` allows +inf (e.g. "no limit")."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    infinite: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value) and not (self.infinite and value == math.inf):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        if self.low is not None:
            text = f"{'greater than' if self.open_low else 'at least'} {self.low}"
        else:
            text = f"{'less than' if self.open_high else 'at most'} {self.high}"
        return text + (" (or inf)" if self.infinite else "")


def at_least(low: float, *, infinite: bool = False) -> Range:
    return Range(low, infinite=infinite)


def positive(*, infinite: bool = False) -> Range:
    return Range(0, open_low=True, infinite=infinite)


def fraction(*, one: bool = False) -> Range:
    """[0, 1), or [0, 1] with ``one``."""
    return Range(0, 1, open_high=not one)


class OutOfRange(ValueError):
    """Raised by a ``validate()`` hook for one of its fields; ``from_dict`` names it by its dotted key."""

    def __init__(self, name: str, value: Any, valid: Range | str):
        super().__init__(name, value, str(valid))
        self.name, self.value, self.valid = name, value, str(valid)


def range_message(key: str, value: Any, valid: Range | str, context: str = "") -> str:
    """``train.steps=-1 is out of range (valid: at least 1)``; ``context`` says what the range depends on."""
    return f"{key}={value!r} is out of range{' ' + context if context else ''} (valid: {valid})"


def check_ranges(obj: Any, **ranges: Range) -> None:
    """Raise OutOfRange for the first field of ``obj`` outside its range (None is "not set"; every item
    of a list or tuple is checked)."""
    for name, valid in ranges.items():
        value = getattr(obj, name)
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, item in items:
            if item is not None and item not in valid:
                raise OutOfRange(name if i is None else f"{name}[{i}]", item, valid)


def config_class(cls: type[T]) -> type[T]:
    """The dataclass that holds a section declared as ``cls``: ``cls`` itself, or what its ``config_class()``
    classmethod returns (a subclass with the fields that are known only at run time)."""
    build = getattr(cls, "config_class", None)
    return build() if build is not None else cls


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and mistyped values."""
    cls = config_class(cls)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key}' (known at this level: {known})")
        kwargs[name] = _coerce(hints[name], value, key, from_text=False)
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except OutOfRange as err:
            raise ConfigError(range_message(f"{prefix}.{err.name}" if prefix else err.name, err.value,
                                            err.valid)) from None
        except ValueError as err:
            raise ConfigError(f"{prefix + ': ' if prefix else ''}{err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (tuples become lists so that YAML stays readable)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level of dotted keys: ``{"train": {"steps": 4}}`` -> ``{"train.steps": 4}``."""
    flat = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        flat.update(flatten(value, key + ".") if isinstance(value, dict) else {key: value})
    return flat


def apply_overrides(data: dict[str, Any], cls: type, overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to the nested dict ``data`` (a config of class ``cls``).

    Values are parsed according to the declared type of the field, so ``optim.lr=1e-5`` is a float
    and ``data.train=null`` clears an optional path.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node, node_cls = data, config_class(cls)
        for depth, part in enumerate(parts):
            hints = _hints(node_cls)
            key = ".".join(parts[: depth + 1])
            if part not in hints:
                known = ", ".join(sorted(hints))
                raise ConfigError(f"unknown config key '{key}' (known at this level: {known})")
            tp = hints[part]
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(tp):
                    raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. {key}.<name>=...")
                node[part] = _coerce(tp, raw, key, from_text=True)
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"'{key}' is not a section, so '{dotted}' does not exist")
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                elif not isinstance(child, dict):
                    raise ConfigError(f"{key}: expected a mapping, got {_describe(child)}")
                node, node_cls = child, config_class(tp)
    return data


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping. A top-level ``base: other.yaml`` (relative to this file) is read first and
    this file's values are merged over it, so that variants of a config state only what differs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' files include each other in a cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {_describe(base)}")
    return _merge(load_yaml(path.parent / base, _seen + (path.resolve(),)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dump_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


__all__ = ["ConfigError", "OutOfRange", "Range", "at_least", "check_ranges", "config_class", "fraction",
           "positive", "range_message", "from_dict", "to_dict", "flatten", "apply_overrides", "load_yaml",
           "dump_yaml"]
