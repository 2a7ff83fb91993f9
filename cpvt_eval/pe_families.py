"""Position-encoding families: the grouping of PE labels that reports and ``cpvt-eval models --family`` use.

A PE label (``ape-learned``, ``peg-0to4``, ``rope-mixed+ape``, ``relbias-window``, ``conv``, ...) belongs to one
family, named after its first part: a RoPE model with a learned APE next to it is a RoPE model. No heavy imports:
reports use this without torch.
"""

from __future__ import annotations

# Table order: the CPVT paper's comparison (APE, then PEG), then the other families.
FAMILIES = {
    "ape": "APE",
    "peg": "PEG",
    "rope": "RoPE",
    "relbias": "relative bias",
    "conv": "convolution",
    "none": "none",
    "other": "other",
}
_PREFIXES = (
    ("ape", "ape"),
    ("sincos", "ape"),
    ("peg", "peg"),
    ("rope", "rope"),
    ("relbias", "relbias"),
    ("conv", "conv"),
    ("none", "none"),
)


def pe_family(pe: str | None) -> str:
    """The family key of a PE label: ``ape``, ``peg``, ``rope``, ``relbias``, ``conv``, ``none`` or ``other``."""
    label = (pe or "none").strip().lower()
    for prefix, family in _PREFIXES:
        if label.startswith(prefix):
            return family
    return "other"


def family_title(pe: str | None) -> str:
    """The family of a PE label as a table shows it (``RoPE``, ``relative bias``, ...)."""
    return FAMILIES[pe_family(pe)]


def family_rank(pe: str | None) -> int:
    """Sort key: the families in table order."""
    return list(FAMILIES).index(pe_family(pe))
