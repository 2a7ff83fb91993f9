"""The file patterns ``--data`` may give for a store: brace expansion as webdataset does it, globs, and several
patterns joined by ``::``."""

from __future__ import annotations

import glob as globlib
import os
import re

from ..errors import DataError, shown

_MAX_EXPANSION = 1_000_000


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset (``braceexpand``) does it: ``{00..63}`` (zero-padded when a bound is),
    ``{a,b,c}``, nested groups; a group that is neither stays as it is."""
    start = pattern.find("{")
    while start != -1:
        depth = 0
        for end in range(start, len(pattern)):
            if pattern[end] == "{":
                depth += 1
            elif pattern[end] == "}":
                depth -= 1
                if depth == 0:
                    break
        else:
            return [pattern]  # unbalanced: literal
        inner = pattern[start + 1 : end]
        alts = _brace_alternatives(inner)
        if alts is None:  # a literal group: keep it, expand what follows
            head = pattern[: end + 1]
            return [head + rest for rest in expand_braces(pattern[end + 1 :])]
        rests = expand_braces(pattern[end + 1 :])
        if len(alts) * len(rests) > _MAX_EXPANSION:
            raise DataError(f"--data pattern {shown(pattern)} expands to more than {_MAX_EXPANSION:,} files")
        return [pattern[:start] + a + r for a in alts for r in rests]
    return [pattern]


def _brace_alternatives(inner: str) -> list[str] | None:
    parts, depth, cur = [], 0, []
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    if len(parts) > 1:
        return [x for p in parts for x in expand_braces(p)]
    m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?", inner)
    if m is None:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    step = abs(int(m.group(3) or 1)) or 1
    if abs(b - a) // step + 1 > _MAX_EXPANSION:
        raise DataError(f"brace range {{{inner}}} expands to more than {_MAX_EXPANSION:,} names")
    padded = any(g.lstrip("-").startswith("0") and len(g.lstrip("-")) > 1 for g in m.groups()[:2])
    width = max(len(m.group(1)), len(m.group(2))) if padded else 0
    values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
    return [f"{v:0{width}d}" if width else str(v) for v in values]


def is_pattern(text: str) -> bool:
    """Whether ``--data`` is a pattern (braces, ``::``, glob characters) rather than one path."""
    return "{" in text or "::" in text or any(c in text for c in "*?[")


def expand_spec(text: str) -> list[str]:
    """The file names a pattern gives: each ``::`` part brace-expanded, then each name with glob characters that does
    not exist as written globbed (sorted); a glob that matches nothing is an error."""
    out: list[str] = []
    for part in text.split("::"):
        if not part:
            continue
        for name in expand_braces(part):
            if any(c in name for c in "*?[") and not os.path.exists(name):
                matches = sorted(globlib.glob(name))
                if not matches:
                    raise DataError(f"no file matches {shown(name)}")
                out.extend(matches)
            else:
                out.append(name)
    return out
