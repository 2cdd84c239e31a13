"""Where a msgspec validation error points, as a key path that people and line maps can use.

msgspec reports the first defect as ``"<what> - at `$.lines[0].baudrate`"``. The MQTT contract turns
that into ``lines[0].baudrate: <what>`` for a :class:`~protocol.errors.ContractError`; the gateway's
config loader also needs the path as a tuple, to find the TOML line it came from. Checks that span
several fields run in ``__post_init__`` and raise ``ValueError("field.sub: what")``; the ``field``
prefix is folded into the path here, so those errors name their key like msgspec's own do.
"""

from __future__ import annotations

import re

import msgspec

__all__ = ["Loc", "dotted", "error_location"]

Loc = tuple[str | int, ...]

_AT = re.compile(r"^(?P<msg>.*?) - at (?:`key` in )?`\$(?P<path>[^`]*)`$", re.DOTALL)
_KEY_ERROR = re.compile(r" - at `key` in `")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[([^\]]*)\]")
_FIELD_PREFIX = re.compile(r"^(?P<field>[A-Za-z_][\w.]*): (?P<msg>.+)$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


def error_location(exc: msgspec.ValidationError) -> tuple[Loc, str]:
    """``(("lines", 0, "baudrate"), "Expected `int` >= 300")`` from a msgspec validation error."""
    text = str(exc)
    loc: list[str | int] = []
    match = _AT.match(text)
    if match:
        text = match.group("msg")
        for name, index, other in _STEP.findall(match.group("path")):
            loc.append(name if name else int(index) if index else ("*" if other == "..." else other))
        if _KEY_ERROR.search(str(exc)):
            loc.append("<key>")
    unknown = _UNKNOWN.match(text)
    if unknown:
        loc.append(unknown.group("field"))
    else:
        prefixed = _FIELD_PREFIX.match(text)
        if prefixed:
            loc.extend(prefixed.group("field").split("."))
            text = prefixed.group("msg")
    return tuple(loc), text


def dotted(loc: Loc) -> str:
    """``lines[0].meters[2].address``; ``<root>`` for an error about the whole document."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"
