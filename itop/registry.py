"""One registry idiom for everything itop looks up by name.

Models, datasets, methods, criteria, distributions, drop schedules, grow initialisations,
pruning-at-init methods, optimizers and learning-rate schedules are all :class:`Registry`
objects: a read-only mapping from name to entry, filled by :meth:`Registry.register`, which
refuses a duplicate name unless asked to replace it, and read by :meth:`Registry.lookup`,
whose error for an unknown name suggests the nearest known one (:func:`itop.errors.unknown_name`).
Nothing in itop branches on a name: adding an entry is one ``register`` call beside its code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from .errors import ConfigError, unknown_name

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order.

    Example::

        OPTIMIZERS = Registry("optimizer")

        @OPTIMIZERS.register("sgd")
        def sgd(params, lr, cfg): ...

        OPTIMIZERS.lookup("sgd")   # the function; "sdg" raises "... did you mean 'sgd'?"

    Args:
        kind: What the entries are, for messages (``"method"``, ``"grow criterion"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    @overload
    def register(self, name: str, entry: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Any:
        """Add ``entry`` under ``name``; without ``entry``, a decorator that adds its target.

        Raises:
            ConfigError: ``name`` is empty or already taken and ``replace`` is false.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries and not replace:
                raise ConfigError(
                    f"{self.kind} '{name}' is already registered; pick another name or pass replace=True"
                )
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def lookup(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises ConfigError with the nearest one."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, name, self._entries) from None

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and plugins that clean up after themselves)."""
        self._entries.pop(name, None)

    def copy(self) -> Registry[T]:
        """A registry of the same kind holding the same entries (a scratch copy for tests)."""
        out: Registry[T] = Registry(self.kind)
        out._entries = dict(self._entries)
        return out

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
