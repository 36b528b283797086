"""Registries mapping config variant classes to the builders of their modules.

A pluggable component is a config subclass (``SASRecConfig``) plus a builder registered here::

    @USER_ENCODERS.register(SASRecConfig)
    def sasrec(cfg: SASRecConfig, *, embedding_dim: int, max_seq_len: int, init_std: float) -> nn.Module:
        ...

Builder keyword arguments per registry (what ``mvrec_dist.models.builders`` passes):

* ``USER_ENCODERS``: ``embedding_dim``, ``max_seq_len``, ``init_std``; the module follows the
  user-encoder interface (``forward(seq[B, L, D], lengths[B]) -> [B, L, D]``, causal).
* ``LOSSES``: ``num_items``, ``item_train_counts``; the module follows ``models.losses``'s interface.
* ``CONTENT_ENCODERS``: none (the config carries everything); the module is a ``ContentEncoder``
  (``out_dim``, ``prepare``, ``forward(input[U, ...]) -> Tensor[U, out_dim]``, and for cached
  features ``cache_split`` / ``cache_identity``: the protocol is documented in
  ``mvrec_dist.models.item_encoders.base``), its config a ``ContentEncoderConfig`` answering
  ``content_kind`` / ``content_shape`` / ``cached_features``.

Registration happens when the component's module is imported. The built-in components are
imported explicitly by ``mvrec_dist.models.builders`` (which ``mvrec_dist.models`` imports), so
importing anything from ``mvrec_dist.models`` makes every built-in available; a new component's
module is added to that import list.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

__all__ = ["Registry", "RegistryError", "USER_ENCODERS", "LOSSES", "CONTENT_ENCODERS"]

BuilderT = TypeVar("BuilderT", bound=Callable[..., Any])


class RegistryError(LookupError):
    """A config variant has no registered builder, or a variant was registered twice."""


class Registry:
    """Maps config variant classes to builder functions.

    Args:
        name: Shown in error messages (``"USER_ENCODERS"``).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._builders: dict[type, Callable[..., Any]] = {}

    def register(self, config_cls: type) -> Callable[[BuilderT], BuilderT]:
        """Decorator registering a builder for ``config_cls``.

        Args:
            config_cls: The config variant class the builder handles (exact class, no subclasses).

        Returns:
            A decorator that records the builder and returns it unchanged.
        """
        def decorate(builder: BuilderT) -> BuilderT:
            if config_cls in self._builders:
                raise RegistryError(f"{self.name}: {config_cls.__name__} is already registered "
                                 f"(to {self._builders[config_cls].__qualname__})")
            self._builders[config_cls] = builder
            return builder
        return decorate

    def build(self, cfg: Any, **kwargs: Any) -> Any:
        """Build the module for variant config ``cfg``.

        Args:
            cfg: A config variant instance.
            **kwargs: Passed to the builder (see the module docstring for each registry).

        Returns:
            Whatever the builder returns (an ``nn.Module``).
        """
        builder = self._builders.get(type(cfg))
        if builder is None:
            name = getattr(cfg, "name", None)
            raise RegistryError(
                f"{self.name} has no builder for {type(cfg).__name__}"
                + (f" (name={name!r})" if name is not None else "")
                + f"; registered: {sorted(c.__name__ for c in self._builders) or 'none'}. A component's "
                "module registers it when imported; add that import to mvrec_dist/models/builders.py")
        return builder(cfg, **kwargs)

    def __contains__(self, config_cls: type) -> bool:
        return config_cls in self._builders

    def variants(self) -> list[type]:
        """The registered config classes, in registration order."""
        return list(self._builders)


USER_ENCODERS = Registry("USER_ENCODERS")
LOSSES = Registry("LOSSES")
CONTENT_ENCODERS = Registry("CONTENT_ENCODERS")
