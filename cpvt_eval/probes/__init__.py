"""The measurements the tool makes of models at sizes, one module each, on one interface (``base.Probe``).

Importing this package imports every module in it, and each ``Probe`` subclass registers itself (and its row type)
as it is defined, so that rows read from a run directory come back typed. Everything else finds the probes here:
``PROBES`` maps each name to its class, the accuracy probe first; ``probe_of(row)`` gives the probe a stored row
belongs to, ``split(rows)`` groups a run directory's rows by probe, ``make(name, **settings)`` builds one. A new
probe is one module in this package, and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import CpvtEvalError
from ..results import FIRST_PROBE, ResultRow, probe_name
from .base import PROBE_TYPES, Probe, column, column_names, probe_columns
from .presentation import ReportSpec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # a probe module registers its probe as it is imported

# probe name -> class, the accuracy probe (the one whose cells keep the earliest keys) first
PROBES: dict[str, type[Probe]] = {FIRST_PROBE: PROBE_TYPES[FIRST_PROBE], **PROBE_TYPES}

__all__ = ["PROBES", "Probe", "ReportSpec", "column", "column_names", "make", "probe_columns", "probe_of", "split"]


def make(name: str, settings=None, **options) -> Probe:
    """The probe registered as ``name``, with its settings (an instance of its ``Settings``, or its fields)."""
    if name not in PROBES:
        raise CpvtEvalError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}")
    return PROBES[name](settings, **options)


def probe_of(row: ResultRow) -> type[Probe]:
    """The probe class a stored row belongs to (by its ``probe`` column)."""
    return PROBES.get(probe_name(row.probe), PROBES[FIRST_PROBE])


def split(rows: list[ResultRow]) -> dict[str, list[ResultRow]]:
    """Rows grouped by probe name, each group in stored order; every probe has a (possibly empty) group, and a row
    of a probe this version does not know (written by a later one) has a group of its own name, never another's."""
    out: dict[str, list[ResultRow]] = {name: [] for name in PROBES}
    for r in rows:
        out.setdefault(probe_name(r.probe), []).append(r)
    return out
