"""Config dataclasses from JSON, every field's type checked against its annotation.

A ``config.json`` edited by hand (or by a stranger) must fail with one line naming the file and
the field, not with a traceback deep inside a stage: :func:`dataclass_from_json` checks unknown
and missing fields and every value's type (``int``, ``float``, ``bool``, ``str``, ``Path``,
``Literal``, ``X | None``, tuples, lists, dicts and nested config dataclasses) before the
dataclass's own ``__post_init__`` checks its ranges.

A field missing from a file is an error when the file says it held it: a run's ``config.json``
records a digest of its keys (:func:`key_digest`), so a key deleted by hand no longer matches
it, while a field that a later dreamlab added, and an older file never had, takes its default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ConfigTypeError", "FullRecord", "dataclass_from_json", "key_digest"]


class ConfigTypeError(ValueError):
    """A JSON value that does not fit the field it is meant for (the message names both)."""


class FullRecord(dict):  # type: ignore[type-arg]
    """A config mapping that lost keys since it was written (its :func:`key_digest` no longer
    matches the one recorded): every field of the dataclass must be present."""


def _key_paths(value: Any, prefix: str = "") -> list[str]:
    if not isinstance(value, Mapping):
        return []
    paths = []
    for key, inner in value.items():
        path = f"{prefix}{key}"
        paths += [path, *_key_paths(inner, path + ".")]
    return paths


def key_digest(config: Mapping[str, Any]) -> str:
    """A short digest of every key path of ``config`` (nested objects included): recorded beside
    a config when it is written, it tells a key removed by hand from a field the file never had."""
    text = json.dumps(sorted(_key_paths(config)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp: Any, value: Any, where: str, complete: bool) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigTypeError(f"{where}: expected one of {list(args)}, got {_describe(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, complete)
            except ConfigTypeError as e:
                errors.append(str(e))
        raise ConfigTypeError(
            errors[0] if len(errors) == 1 else f"{where}: {_describe(value)} fits none of {tp}"
        )
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return dataclass_from_json(tp, value, where, complete=complete)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigTypeError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigTypeError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigTypeError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigTypeError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigTypeError(f"{where}: expected a path (a string), got {_describe(value)}")
        return Path(value)
    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigTypeError(f"{where}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                _convert(args[0], v, f"{where}[{i}]", complete) for i, v in enumerate(value)
            )
        if args:
            if len(args) != len(value):
                raise ConfigTypeError(
                    f"{where}: expected a list of {len(args)} values, got {len(value)}"
                )
            return tuple(
                _convert(a, v, f"{where}[{i}]", complete)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        return tuple(value)
    if origin is list or tp is list:
        if not isinstance(value, list | tuple):
            raise ConfigTypeError(f"{where}: expected a list, got {_describe(value)}")
        inner = args[0] if args else Any
        return [_convert(inner, v, f"{where}[{i}]", complete) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigTypeError(f"{where}: expected a JSON object, got {_describe(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            if key_tp is str and not isinstance(k, str):
                raise ConfigTypeError(f"{where}: keys must be strings, got {_describe(k)}")
            out[k] = _convert(val_tp, v, f"{where}.{k}", complete)
        return out
    return value  # an annotation this checker does not model: the dataclass checks it


def dataclass_from_json(
    cls: type, data: Any, source: str = "config", *, complete: bool | None = None
) -> Any:
    """An instance of the dataclass ``cls`` from its JSON form (``dataclasses.asdict``'s output).

    Args:
        cls: the config dataclass.
        data: a JSON object.
        source: names the file (and field path) in errors.
        complete: every field must be present (default: whether ``data`` is a
            :class:`FullRecord`); otherwise missing fields take their defaults.

    Raises:
        ConfigTypeError: ``data`` is not an object, names unknown fields, lacks fields, or holds
            a value of the wrong type; or the dataclass rejected a value (``__post_init__``).
    """
    if not isinstance(data, Mapping):
        raise ConfigTypeError(
            f"{source}: expected a JSON object for {cls.__name__}, got {_describe(data)}"
        )
    if complete is None:
        complete = isinstance(data, FullRecord)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigTypeError(f"{source}: unknown {cls.__name__} fields {unknown}")
    if complete:
        missing = sorted(set(fields) - set(data))
        if missing:
            raise ConfigTypeError(
                f"{source}: {cls.__name__} fields {missing} are missing (the file recorded them "
                "when it was written; restore them, e.g. from the preset's config)"
            )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _convert(hints.get(name, Any), value, f"{source}:{name}", complete)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigTypeError(f"{source}: invalid {cls.__name__}: {e}") from None
