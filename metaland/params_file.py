"""Reading a params file as DVC reads it, within limits: YAML 1.2 (ruamel's safe loader, DVC's
own), duplicate keys refused, and a hostile or broken file refused with one paragraph before it
can exhaust time, memory or the interpreter's stack.

Checked before anything is built from the text: its size (:data:`MAX_BYTES`), its encoding (UTF-8),
the nesting depth (:data:`MAX_DEPTH`), the number of nodes once aliases are expanded
(:data:`MAX_NODES`, against "billion laughs" alias bombs) and the length of every scalar
(:data:`MAX_SCALAR`; an integer longer than :data:`MAX_DIGITS` digits is refused rather than parsed). After: every
mapping key is printable text (no line breaks or control characters).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaland.errors import ConfigError

MAX_BYTES = 4 << 20
"""Largest params file read (the paper profile is about 100 kB)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and sequences (params.yaml needs 6)."""
MAX_NODES = 1_000_000
"""Most nodes of the document with every alias expanded."""
MAX_SCALAR = 10_000
"""Longest scalar, in characters."""
MAX_DIGITS = 40
"""Longest integer (a seed is below 2**63: 19 digits)."""
FIX = (
    "correct the file (`git diff params.yaml` shows your edits; `python -m metaland profile default --force` "
    "restores a profile)"
)


def read_params_text(path: Path) -> str:
    """The text of a params file: at most :data:`MAX_BYTES`, UTF-8."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path} is {size} bytes, more than the {MAX_BYTES} a params file may have. Fix: {FIX}.")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} is not UTF-8 text: byte 0x{data[err.start]:02x} on line {line} (a Latin-1 or Windows-1252 "
            f"character?). Fix: save the file as UTF-8, or {FIX}."
        ) from None


def load_yaml(text: str, source: str) -> Any:
    """The data of a params file's text, parsed as DVC parses it, after the checks of the module."""
    from ruamel.yaml import YAML, YAMLError

    yaml = YAML(typ="safe")
    try:
        _check_events(yaml.parse(text), source)
        data = yaml.load(text)
    except YAMLError as err:
        if type(err).__name__ == "DuplicateKeyError":
            lines = " and ".join(str(mark.line + 1) for mark in (err.context_mark, err.problem_mark) if mark)
            raise ConfigError(
                f"{source} repeats a key in one mapping ({err.problem.split(' with value')[0]}, lines {lines}); DVC "
                "refuses such a file, and a YAML reader would silently keep only the last value. Fix: remove one."
            ) from None
        raise ConfigError(
            f"{source} is not valid YAML ({_one_line(err)}). Fix: correct the syntax at the position shown."
        ) from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ConfigError(f"{source} cannot be read ({type(err).__name__}: {_one_line(err)}). Fix: {FIX}.") from None
    _check_keys(data, source, "")
    return data


def _check_events(events, source: str) -> None:
    """Depth, expanded size and scalar lengths, from the parser's events (no tree is built yet)."""
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        ScalarEvent,
    )

    sizes: dict[str, int] = {}  # anchor -> nodes of the anchored node, aliases expanded
    open_nodes: list[list] = []  # [nodes so far, anchor] of each open collection
    total = 0
    for event in events:
        line = event.start_mark.line + 1 if event.start_mark is not None else "?"
        added = 0
        if isinstance(event, CollectionStartEvent):
            open_nodes.append([1, event.anchor])
            if len(open_nodes) > MAX_DEPTH:
                raise ConfigError(
                    f"{source} nests mappings and sequences more than {MAX_DEPTH} deep (line {line}). Fix: {FIX}."
                )
            total += 1
            continue
        if isinstance(event, CollectionEndEvent):
            count, anchor = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = count
            if open_nodes:
                open_nodes[-1][0] += count
            continue
        if isinstance(event, ScalarEvent):
            if len(event.value) > MAX_SCALAR:
                raise ConfigError(
                    f"{source}: the value on line {line} is {len(event.value)} characters long, more than the "
                    f"{MAX_SCALAR} a params value may have. Fix: {FIX}."
                )
            digits = len(event.value.lstrip("+-"))
            if not event.style and event.value.lstrip("+-").isdigit() and digits > MAX_DIGITS:
                raise ConfigError(
                    f"{source}: the number on line {line} has {digits} digits; no knob takes more than {MAX_DIGITS}. "
                    f"Fix: {FIX}."
                )
            added = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, AliasEvent):
            added = sizes.get(event.anchor, 1)
        total += added
        if open_nodes:
            open_nodes[-1][0] += added
        if total > MAX_NODES:
            raise ConfigError(
                f"{source} expands to more than {MAX_NODES} values once its aliases (*name) are resolved (line "
                f"{line}): an alias bomb, or aliases nested too deep. Fix: {FIX}."
            )


def _check_keys(data: Any, source: str, where: str) -> None:
    if isinstance(data, Mapping):
        for key, value in data.items():
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and any(unicodedata.category(c).startswith("C") for c in key):
                raise ConfigError(
                    f"{source}: the key {name!r} holds a line break or another control character. Fix: remove it "
                    "(a quoted key may have picked up a newline)."
                )
            _check_keys(value, source, name)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _check_keys(value, source, f"{where}[{index}]")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).replace('"<unicode string>", ', "").split())[:400]
