"""Result rows and their identity (``schema``), statistics (``stats``), the run directory (``store``) and
provenance (``provenance``)."""

from .provenance import provenance_record
from .schema import (
    CSV_COLUMNS,
    FIRST_PROBE,
    KEY_FIELDS,
    SCHEMA_VERSION,
    CellId,
    ResultRow,
    id_fields,
    pe_options_label,
    probe_identity,
    probe_name,
    register_row_type,
    row_key,
    row_type_of,
)
from .stats import format_ci, mcnemar_exact, mean_interval, wilson_interval
from .store import RunStore, atomic_write_bytes, atomic_write_text

__all__ = [
    "CSV_COLUMNS",
    "FIRST_PROBE",
    "KEY_FIELDS",
    "SCHEMA_VERSION",
    "CellId",
    "ResultRow",
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_text",
    "format_ci",
    "id_fields",
    "mcnemar_exact",
    "mean_interval",
    "pe_options_label",
    "probe_identity",
    "probe_name",
    "register_row_type",
    "row_type_of",
    "provenance_record",
    "row_key",
    "wilson_interval",
]
