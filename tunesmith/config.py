"""Typed configs: plain dataclasses, strict (de)serialization, named presets, overrides.

Every model and every training run is described by a dataclass.  Configs travel as
JSON (or YAML) and are checked on the way in: an unknown key or a value of the
wrong type is an error that names the key, never a silently ignored default.
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from tunesmith.errors import ConfigError
from tunesmith.files import atomic_write_text

T = TypeVar("T")

# Bounds on what a config document may hold.  Configs are small (a few hundred values); the
# bounds stop hostile ones: YAML aliases can expand a 1 KB file into billions of values (an
# "alias bomb"), and deep nesting overflows the stack.
MAX_CONFIG_BYTES = 16 * 2**20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64
QUOTE_CHARS = 100  # a value quoted in an error message is cut to this

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = QUOTE_CHARS
_repr.maxlevel = 3


def quote(value: Any) -> str:
    """``repr(value)`` cut to :data:`QUOTE_CHARS`, in bounded time: an error message stays one short
    line whatever the input held (the repr of an alias bomb is hundreds of megabytes)."""
    text = _repr.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


class ConfigValueError(ConfigError):
    """A value of the right type that a field refuses (``lr=nan``); raised by a config's
    ``__post_init__`` with the field's own name, and re-keyed to the dotted path by :func:`from_dict`."""

    def __init__(self, key: str, value: Any, requirement: str) -> None:
        self.key, self.value, self.requirement = key, value, requirement
        super().__init__(f"config key '{key}' must be {requirement}, got {quote(value)}")


def require(ok: bool, key: str, value: Any, requirement: str) -> None:
    """Raise :class:`ConfigValueError` unless ``ok``: ``require(lr > 0, "lr", lr, "> 0")``."""
    if not ok:
        raise ConfigValueError(key, value, requirement)


def check_document(data: Any, source: str) -> None:
    """Refuse a parsed document that is too big or too deep to handle safely.

    Counts values as if every YAML alias were expanded, without expanding them: shared
    objects are counted once and their size reused, so the check is linear in the file.
    """
    if not _is_container(data):
        return
    sizes: dict[int, int] = {}  # id of a finished container -> its expanded size
    on_path = {id(data)}  # containers being walked: meeting one again is a cycle
    frames: list[list[Any]] = [[data, iter(_children(data)), 1]]  # container, its children, size so far
    while frames:
        frame = frames[-1]
        child = next(frame[1], _END)
        if child is _END:
            frames.pop()
            on_path.discard(id(frame[0]))
            sizes[id(frame[0])] = frame[2]
            if frames:
                frames[-1][2] += frame[2]  # the total is unchanged: no check needed
            continue
        if not _is_container(child):
            frame[2] += 1 + len(child) // 100 if isinstance(child, (str, bytes)) else 1
        elif id(child) in sizes:
            frame[2] += sizes[id(child)]
        elif id(child) in on_path:
            raise ConfigError(f"{source}: a value contains itself (a recursive YAML alias)")
        elif len(frames) >= MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        else:
            on_path.add(id(child))
            frames.append([child, iter(_children(child)), 1])
        if sum(f[2] for f in frames) > MAX_CONFIG_VALUES:  # at most MAX_CONFIG_DEPTH terms
            raise ConfigError(f"{source}: holds more than {MAX_CONFIG_VALUES:,} values once YAML aliases "
                              "are expanded; refusing it")


_END = object()


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, set, frozenset))


def _children(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        return (item for pair in value.items() for item in pair)
    return value


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
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not be strings
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
    except ConfigValueError as err:  # __post_init__ validation that names its field
        raise ConfigValueError(_join(where, err.key), err.value, err.requirement) from None
    except (TypeError, ValueError) as err:  # other __post_init__ validation
        message = str(err)
        if len(message) > 4 * QUOTE_CHARS:
            message = message[: 4 * QUOTE_CHARS - 3] + "..."
        raise ConfigError(f"{where or cls.__name__}: {message}") from None


def _join(prefix: str, key: Any) -> str:
    key = str(key)
    if len(key) > QUOTE_CHARS:  # a key is user input too
        key = key[: QUOTE_CHARS - 3] + "..."
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
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {quote(value)}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key '{key}': {quote(value)} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {quote(value)}")
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
            raise ConfigError(f"config key '{key}': expected a mapping, got {quote(value)}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected float, got {quote(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected int, got {quote(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {quote(value)}")
        return value
    raise ConfigError(f"config key '{key}': unsupported annotation {_type_name(tp)}")


# ---------------------------------------------------------------------------
# files


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a config of type ``cls`` from a .json or .yaml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a config file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
    try:
        data = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except (ValueError, yaml.YAMLError) as err:  # ValueError: JSONDecodeError, or an integer of 5,000 digits
        raise ConfigError(f"{path}: not valid {kind}: {_first_line(str(err))}") from None
    check_document(data, str(path))
    try:
        return from_dict(cls, {} if data is None else data)
    except ConfigError as err:  # name the file too: with --resume it is the run's saved config
        raise ConfigError(f"{path}: {err}") from None


def _first_line(text: str) -> str:
    line = (text.splitlines() or [""])[0]
    return line if len(line) <= 4 * QUOTE_CHARS else line[: 4 * QUOTE_CHARS - 3] + "..."


def save_config(config: Any, path: str | Path) -> None:
    """Write a config as JSON or YAML (by suffix), atomically: a run's saved config is what
    ``--resume`` trusts, so a crash mid-write must not leave half of one."""
    path = Path(path)
    data = to_dict(config)
    if path.suffix in (".yaml", ".yml"):
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    else:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")


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
        value = _parse_value(raw, key)
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


def _parse_value(raw: str, key: str = "") -> Any:
    """A command-line value: int, float (``1e-3`` too, which YAML 1.1 leaves a string), or YAML."""
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    source = f"override '{_join('', key)}'"
    try:
        value = yaml.safe_load(raw)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    except (ValueError, yaml.YAMLError):
        return raw
    check_document(value, source)
    return value


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
