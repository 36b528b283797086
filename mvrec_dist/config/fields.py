"""Field helpers for the typed config dataclasses.

Every config field carries a one-line doc in its metadata, so that CLI help, YAML comments and
error messages can be generated from the schema itself (the litgpt ``args.py`` idea, made
machine-readable). This module imports nothing heavy: configs must load without torch or ray.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

__all__ = ["ConfigError", "setting", "field_doc", "Problems"]


class ConfigError(ValueError):
    """A config could not be built; ``problems`` lists every issue, each naming its key."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n  - " + "\n  - ".join(self.problems))


def setting(default: Any = dataclasses.MISSING, *, doc: str,
            factory: Callable[[], Any] | None = None) -> Any:
    """Declare a config field with its one-line documentation.

    Args:
        default: The default value (immutable values only; use ``factory`` for nested configs).
        doc: One line saying what the field controls, shown in ``--help`` and error messages.
        factory: Zero-argument callable producing the default, for nested dataclasses.

    Returns:
        A ``dataclasses.field`` carrying ``doc`` in its metadata.
    """
    if not doc or "\n" in doc:
        raise ValueError("a config field needs a one-line doc")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def field_doc(cls: type, name: str) -> str:
    """Return the one-line doc of field ``name`` of config class ``cls`` ('' when missing)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("doc", "")
    return ""


class Problems:
    """Collects validation problems in ``__post_init__`` and raises them together.

    Keys are written relative to the section; the loader prefixes the section path, so the
    final message names the full dotted key (``train.lr``), as a user writes it in YAML.
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, key: str, message: str) -> None:
        """Record ``key: message`` unless ``ok``."""
        if not ok:
            self.items.append(f"{key}: {message}")

    def raise_if_any(self) -> None:
        """Raise one ``ConfigError`` holding every recorded problem."""
        if self.items:
            raise ConfigError(self.items)
