"""One registry per kind of thing: datasets, models, algorithms, probes, studies.

A new algorithm, probe or study is one new module plus one ``register`` call; config validation,
the CLI and the DAG discover it through its registry.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Generic, TypeVar

from metaland.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry mapping whose lookups fail with a message listing the known names."""

    def __init__(self, kind: str, *, package: str | None = None):
        """With ``package``, entry ``name`` is registered by that package's module ``name``, which is
        imported on its first lookup: checking a name (:meth:`check`) imports nothing, so a stage
        that only validates params does not pay for the modules' heavy imports (plots, statistics).
        """
        self.kind = kind
        self._package = package
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """The known names, without importing a lazily registered entry's module."""
        if self._package is None:
            return sorted(self._entries)
        package = importlib.import_module(self._package)
        return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))

    def check(self, name: str, *, key: str = "") -> None:
        """Fail unless ``name`` is known; ``key`` names the parameter that asked, for the message."""
        names = self.names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f"{key} = " if key else ""
            raise ConfigError(
                f"{where}{name!r} is not a known {self.kind}.{hint} Known {_plural(self.kind)}: "
                f"{', '.join(names)}. Fix: use one of these names."
            )

    def get(self, name: str, *, key: str = "") -> T:
        """The entry called ``name``; ``key`` names the parameter that asked, for the message."""
        if name in self._entries:
            return self._entries[name]
        self.check(name, key=key)  # a known name not registered yet is a lazy entry: import its module
        importlib.import_module(f"{self._package}.{name}")
        if name not in self._entries:
            raise ValueError(f"module {self._package}.{name} registers no {self.kind} {name!r}")
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self.names()]


def _plural(noun: str) -> str:
    return f"{noun[:-1]}ies" if noun.endswith("y") else f"{noun}s"
