"""Build typed configs from YAML presets plus dotted overrides (``train.lr=3e-4``).

Rules, enforced here once for every job:

* Unknown keys are errors that name the full dotted key and suggest the closest known key.
* Values are checked against the field's annotation (``int``, ``float``, ``bool``, ``str``,
  ``Literal``, ``Optional``, ``tuple[T, ...]``, nested dataclasses); a wrong type names the key,
  the expected type and the value given. Nothing is coerced except int -> float and numeric
  text such as ``3e-4`` (which YAML 1.1 reads as a string) -> float.
* A field typed as a *variant base* (a config class with ``name``-tagged subclasses, e.g.
  ``UserEncoderConfig``) picks its subclass from the ``name`` key, so registries of pluggable
  components get typed, validated settings without a second config mechanism.
* Every problem is collected and raised together in one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union, get_args, get_origin

import yaml

from mvrec_dist.config.fields import ConfigError

__all__ = ["load_config", "build_config", "apply_overrides", "config_to_dict", "config_to_yaml",
           "describe_config", "variant_subclasses"]

T = TypeVar("T")
_MISSING = object()


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from an optional YAML preset and ``key.path=value`` overrides.

    Args:
        cls: The top-level config dataclass (e.g. ``TrainJobConfig``).
        path: YAML preset; ``None`` starts from the dataclass defaults.
        overrides: Dotted assignments applied after the preset, values parsed as YAML scalars.

    Returns:
        A validated instance of ``cls``.

    Raises:
        ConfigError: listing every unknown key, wrong type and failed cross-field check.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        loaded = yaml.safe_load(text)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of sections"])
        raw = loaded
    raw = apply_overrides(raw, overrides)
    return build_config(cls, raw)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` override applied.

    Args:
        raw: Nested mapping as read from YAML.
        overrides: Items of the form ``dotted.key=value``; the value is parsed as YAML.

    Returns:
        A new nested dict.
    """
    out = _deep_copy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
            continue
        key, _, text = item.partition("=")
        key = key.strip().lstrip("-")
        parts = key.split(".")
        if not all(parts):
            problems.append(f"override '{item}': empty key segment")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() != "" else ""
        except yaml.YAMLError as exc:
            problems.append(f"{key}: could not parse value {text!r}: {exc}")
            continue
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def build_config(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Build and validate ``cls`` from a nested mapping; see the module docstring for rules."""
    problems: list[str] = []
    obj = _build(cls, raw, "", problems)
    if problems:
        raise ConfigError(problems)
    return obj


def variant_subclasses(base: type) -> dict[str, type]:
    """Map each ``name`` tag to its concrete subclass of a variant base config class."""
    found: dict[str, type] = {}
    stack = list(base.__subclasses__())
    while stack:
        sub = stack.pop()
        stack.extend(sub.__subclasses__())
        tag = _variant_tag(sub)
        if tag is not None:
            found[tag] = sub
    return found


def _variant_tag(cls: type) -> str | None:
    for f in dataclasses.fields(cls):
        if f.name == "name":
            hint = typing.get_type_hints(cls).get("name")
            if get_origin(hint) is Literal and len(get_args(hint)) == 1:
                return get_args(hint)[0]
    return None


def _is_variant_base(cls: type) -> bool:
    return dataclasses.is_dataclass(cls) and bool(variant_subclasses(cls)) and _variant_tag(cls) is None


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    n0 = len(problems)
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of settings, got {type(raw).__name__} {raw!r}")
        return None
    if _is_variant_base(cls):
        variants = variant_subclasses(cls)
        tag = raw.get("name", _MISSING)
        if tag is _MISSING:
            default = _default_variant(cls)
            if default is None:
                problems.append(f"{prefix}name: required, one of {sorted(variants)}")
                return None
            tag = _variant_tag(default)
        if tag not in variants:
            problems.append(f"{prefix}name: unknown '{tag}', expected one of {sorted(variants)}")
            return None
        cls = variants[tag]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}; known keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        value = _convert(hints[name], raw[name], f"{prefix}{name}", problems)
        if value is not _MISSING:
            kwargs[name] = value
    if len(problems) > n0:
        # Cross-field checks on a half-built section would only add noise to the real errors.
        return None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        problems.extend(_prefix(p, prefix) for p in exc.problems)
    except TypeError as exc:
        problems.append(f"{where}: {exc}")
    return None


def _prefix(problem: str, prefix: str) -> str:
    # Sub-config checks name keys relative to their own section; make them absolute, once.
    return problem if not prefix or problem.startswith(prefix) else prefix + problem


def _default_variant(cls: type) -> type | None:
    default = getattr(cls, "default_variant", None)
    return default() if callable(default) else None


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        sub: list[str] = []
        for a in non_none:
            trial: list[str] = []
            out = _convert(a, value, key, trial)
            if not trial:
                return out
            sub.extend(trial)
        if len(non_none) == 1 and isinstance(value, Mapping):
            # An optional section given as a mapping: its own problems say more than "expected X or null".
            problems.extend(sub)
        else:
            problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return _MISSING
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        problems.append(f"{key}: expected one of {list(choices)}, got {value!r}")
        return _MISSING
    if origin in (tuple, list):
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
            return _MISSING
        elem = args[0] if args else Any
        items = []
        for i, v in enumerate(value):
            out = _convert(elem, v, f"{key}[{i}]", problems)
            if out is _MISSING:
                return _MISSING
            items.append(out)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return _MISSING
        return dict(value)
    if dataclasses.is_dataclass(tp):
        n = len(problems)
        out = _build(tp, value, key + ".", problems)
        return _MISSING if len(problems) > n else out
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads exponents without a dot ('3e-4') as strings; accept numeric text only.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        if isinstance(value, tp):
            return value
    problems.append(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return _MISSING


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Turn a config dataclass into plain nested dicts/lists (YAML- and JSON-safe)."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def config_to_yaml(cfg: Any) -> str:
    """Render a config as YAML with each field's doc as a comment above it."""
    lines: list[str] = []

    def emit(obj: Any, indent: int) -> None:
        pad = " " * indent
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            doc = f.metadata.get("doc")
            if doc:
                lines.append(f"{pad}# {doc}")
            if dataclasses.is_dataclass(v):
                lines.append(f"{pad}{f.name}:")
                emit(v, indent + 2)
            else:
                dumped = yaml.safe_dump(config_to_dict(v) if isinstance(v, tuple) else v,
                                        default_flow_style=True).strip()
                if dumped.endswith("\n..."):
                    dumped = dumped[:-4].strip()
                if dumped.endswith("..."):
                    dumped = dumped[:-3].strip()
                lines.append(f"{pad}{f.name}: {dumped}")
    emit(cfg, 0)
    return "\n".join(lines) + "\n"


def describe_config(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """List ``(dotted key, type, doc)`` for every field of ``cls``, recursing into sections.

    Variant bases list the keys of every variant, tagged with the ``name`` that enables them.
    """
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            if _is_variant_base(tp):
                for tag, sub in sorted(variant_subclasses(tp).items()):
                    for k, t, d in describe_config(sub, key + "."):
                        if not k.endswith(".name"):
                            rows.append((k, t, f"[{key}.name={tag}] {d}"))
                rows.append((key + ".name", "one of " + ", ".join(sorted(variant_subclasses(tp))),
                             f.metadata.get("doc", "")))
            else:
                rows.extend(describe_config(tp, key + "."))
        else:
            rows.append((key, _type_name(tp), f.metadata.get("doc", "")))
    return rows


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
