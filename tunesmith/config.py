"""Typed configs: plain dataclasses, strict (de)serialization, named presets, overrides.

Every model and every training run is described by a dataclass.  Configs travel as
JSON (or YAML) and are checked on the way in: an unknown key or a value of the
wrong type is an error that names the key, never a silently ignored default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from tunesmith.errors import ConfigError

T = TypeVar("T")




# ---------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(config).__name__} is not a config dataclass")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build ``cls`` from ``data``, checking every key and every value's type.

    Missing keys take the dataclass default; unknown keys and wrong types raise
    :class:`ConfigError` naming the dotted key (``model.dim``).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    # keys a config no longer has (settings that moved elsewhere) are read and ignored, so
    # model directories written before the move still load
    retired = set(getattr(cls, "RETIRED_KEYS", ()))
    data = {k: v for k, v in data.items() if k not in retired}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(where, unknown[0])
        raise ConfigError(
            f"unknown config key '{key}' (known keys of {cls.__name__}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"missing required config key '{_join(where, missing[0])}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # __post_init__ validation
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (and convert lists to tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected int, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}': unsupported annotation {_type_name(tp)}")


# ---------------------------------------------------------------------------
# files


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a config of type ``cls`` from a .json or .yaml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {err}".splitlines()[0]) from None
    return from_dict(cls, data or {})


def save_config(config: Any, path: str | Path) -> None:
    """Write a config as JSON or YAML (by suffix)."""
    path = Path(path)
    data = to_dict(config)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------------------
# overrides: --set model.dim=512


def apply_overrides(config: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Return a copy of ``config`` with ``key.path=value`` overrides applied.

    Values are parsed as YAML scalars/lists (``512``, ``1e-4``, ``true``, ``[1, 2]``)
    and then type-checked like any other config value.
    """
    data = to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = _parse_value(raw)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}'")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key '{key}'")
        node[parts[-1]] = value
    return from_dict(type(config), data)


def _parse_value(raw: str) -> Any:
    """A command-line value: int, float (``1e-3`` too, which YAML 1.1 leaves a string), or YAML."""
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


# ---------------------------------------------------------------------------
# presets

_PRESETS: dict[str, dict[str, Callable[[], Any]]] = {}


def register_preset(kind: str, name: str) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """Decorator: register a zero-argument function returning a config as preset ``kind/name``."""

    def wrap(fn: Callable[[], T]) -> Callable[[], T]:
        _PRESETS.setdefault(kind, {})[name] = fn
        return fn

    return wrap


def preset(kind: str, name: str) -> Any:
    """A fresh copy of the named preset config."""
    names = _PRESETS.get(kind, {})
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"unknown {kind} preset '{name}' (known: {known})")
    return names[name]()


def preset_names(kind: str) -> list[str]:
    return sorted(_PRESETS.get(kind, {}))
