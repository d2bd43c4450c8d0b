"""One registry per kind of thing: datasets, models, algorithms, probes, studies.

A new algorithm, probe or study is one new module plus one ``register`` call; config validation,
the CLI and the DAG discover it through its registry.
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from metaland.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry mapping whose lookups fail with a message listing the known names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str, *, key: str = "") -> T:
        """The entry called ``name``; ``key`` names the parameter that asked, for the message."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = f"{key} = " if key else ""
            raise ConfigError(
                f"{where}{name!r} is not a known {self.kind}.{hint} Known {self.kind}s: "
                f"{', '.join(sorted(self._entries))}. Fix: use one of these names."
            ) from None

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())
