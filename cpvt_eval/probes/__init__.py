"""The measurements the tool makes of models at sizes, one module each, on one interface (``base.Probe``).

* ``resolution``: top-1/top-5 by size (``cpvt-eval resolution``);
* ``shift``: consistency of the top-1 under translation (``cpvt-eval shift``);
* ``agreement``: agreement with the model's own native-size predictions, labels optional (``cpvt-eval agreement``).

``PROBES`` maps each probe's name to its class; ``probe_of(row)`` gives the probe a stored row belongs to, and
``split(rows)`` groups a run directory's rows by probe. Importing this package imports every module in it, and
each ``Probe`` subclass registers itself and its row type (``base.PROBE_TYPES``), so rows read from a run directory
come back typed. A new probe is one module here plus its command in ``cli/``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..results import ResultRow, probe_name
from .agreement import Agreement
from .base import PROBE_TYPES, Probe, ReportSpec, column, column_names, probe_columns
from .resolution import RESOLUTION, Resolution
from .shift import Shift

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # a probe module registers its probe as it is imported

# probe name -> class, the accuracy probe first
PROBES: dict[str, type[Probe]] = {"resolution": Resolution, **PROBE_TYPES}

__all__ = [
    "PROBES",
    "RESOLUTION",
    "Agreement",
    "Probe",
    "ReportSpec",
    "Resolution",
    "Shift",
    "column",
    "column_names",
    "probe_columns",
    "probe_of",
    "split",
]


def probe_of(row: ResultRow) -> type[Probe]:
    """The probe class a stored row belongs to (by its ``probe`` column)."""
    return PROBES.get(probe_name(row.probe), Resolution)


def split(rows: list[ResultRow]) -> dict[str, list[ResultRow]]:
    """Rows grouped by probe name, each group in stored order; every probe has a (possibly empty) group, and a row
    of a probe this version does not know (written by a later one) has a group of its own name, never another's."""
    out: dict[str, list[ResultRow]] = {name: [] for name in PROBES}
    for r in rows:
        out.setdefault(probe_name(r.probe), []).append(r)
    return out
