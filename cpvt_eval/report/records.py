"""Records behind every report: one labelled record per cell, derived from the stored rows.

Rows of one model under several conditions (checkpoint, crop, dtype, ...) are told apart by the ``CellId`` fields
whose values differ; nothing is recomputed, pairs read the stored per-image predictions.
"""

from __future__ import annotations

import math

from ..errors import ResultsError
from ..pe_families import family_rank, family_title
from ..published import applies_to, published_for
from ..results import CellId, ResultRow, RunStore, id_fields, mcnemar_exact, row_key, wilson_interval
from ..results.schema import DATA, PROTOCOL, WEIGHTS

# Fields that may tell two rows of the same model apart in one run directory; the ones that differ go into labels.
_VARIANT_FIELDS = tuple((f.name, f.metadata["short"]) for f in id_fields(WEIGHTS, DATA, PROTOCOL))


def row_labels(rows: list[ResultRow]) -> dict[str, str]:
    """Row key -> display label: the model name, plus the conditions that tell a model's rows apart when the run
    directory holds the same model under several (checkpoint, crop, dtype, ...)."""
    by_model: dict[str, list[ResultRow]] = {}
    for r in rows:
        by_model.setdefault(r.model, []).append(r)
    varying_of = {
        model: [(f, short) for f, short in _VARIANT_FIELDS if len({str(getattr(r, f)) for r in group}) > 1]
        for model, group in by_model.items()
    }
    labels = {}
    for r in rows:
        varying = varying_of[r.model]
        parts = []
        for f, short in varying:
            value = getattr(r, f)
            if f in ("checkpoint_sha256", "dataset_fingerprint"):
                value = str(value)[:8]
            parts.append(f"{short}={value}")
        labels[row_key(r)] = r.model + (f" [{', '.join(parts)}]" if parts else "")
    return labels


def ordered(rows: list[ResultRow]) -> list[ResultRow]:
    """Rows grouped by label in order of first appearance, sizes ascending within a label."""
    labels = row_labels(rows)
    first = {lab: i for i, lab in reversed(list(enumerate(labels[row_key(r)] for r in rows)))}
    return sorted(rows, key=lambda r: (first[labels[row_key(r)]], r.img_size))


def round_or_none(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def top1_records(rows: list[ResultRow]) -> list[dict]:
    """One record per cell: top-1 with its Wilson 95% interval, the change from the model's native size and
    from the published number (with its confidence grade)."""
    labels = row_labels(rows)
    by_cell = {(labels[row_key(r)], r.img_size): r for r in rows}
    out = []
    for r in ordered(rows):
        label = labels[row_key(r)]
        lo, hi = wilson_interval(r.correct1, r.n_images)
        native = by_cell.get((label, r.native_size)) if r.native_size else None
        pub = published_for(r.model).get(r.img_size) if applies_to(r.label_space) else None
        out.append(
            {
                "label": label,
                "model": r.model,
                "pe": r.pe,
                "pe_family": family_title(r.pe),
                "img_size": r.img_size,
                "n_images": r.n_images,
                "correct1": r.correct1,
                "top1": round_or_none(r.top1),
                "top5": round_or_none(r.top5),
                "top1_ci95_low": round_or_none(lo),
                "top1_ci95_high": round_or_none(hi),
                "native_size": r.native_size,
                "delta_native": None if native is None else round_or_none(r.top1 - native.top1),
                "published_top1": None if pub is None else pub.top1,
                "published_confidence": None if pub is None else pub.confidence,
                "published_crop_pct": None if pub is None else pub.crop_pct,
                "delta_published": None if pub is None else round_or_none(r.top1 - pub.top1),
            }
        )
    return out


def best_size_records(records: list[dict]) -> list[dict]:
    """Per model (label) with more than one size: the size of the best top-1 (the smaller size on an exact tie),
    its Wilson interval, and the other sizes whose interval overlaps it (``tied``: not told apart on these
    images). ``records`` are ``top1_records``."""
    by_label: dict[str, list[dict]] = {}
    for r in records:
        if r["top1"] is not None:
            by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, group in by_label.items():
        if len(group) < 2:
            continue
        best = max(group, key=lambda r: (r["top1"], -r["img_size"]))
        lo, hi = best["top1_ci95_low"], best["top1_ci95_high"]
        tied = [
            r["img_size"] for r in group if r is not best and r["top1_ci95_high"] >= lo and r["top1_ci95_low"] <= hi
        ]
        out.append(
            {
                "label": label,
                "model": best["model"],
                "best_size": best["img_size"],
                "top1": best["top1"],
                "top1_ci95_low": lo,
                "top1_ci95_high": hi,
                "tied_sizes": sorted(tied),
                "sizes": sorted(r["img_size"] for r in group),
                "native_size": best["native_size"],
            }
        )
    return out


def by_family(labels: list[str], pe_of: dict[str, str]) -> list[str]:
    """Labels grouped by PE family (APE, PEG, RoPE, relative bias, convolution, none), in order of appearance
    within a family, so that one table compares the families."""
    first = {lab: i for i, lab in enumerate(labels)}
    return sorted(labels, key=lambda lab: (family_rank(pe_of[lab]), first[lab]))


def throughput_records(rows: list[ResultRow]) -> list[dict]:
    labels = row_labels(rows)
    return [
        {
            "label": labels[row_key(r)],
            "model": r.model,
            "img_size": r.img_size,
            "images_per_sec": r.images_per_sec,
            "gflops_per_image": r.gflops_per_image,
            "throughput_batch": r.throughput_batch,
            "device": r.device,
            "dtype": r.dtype,
            # Timed in interleaved rounds with the other models of the size: the spread of the rounds and the
            # median of the per-round images/s ratios to the reference (the first model of those rounds).
            "rounds": r.extra.get("throughput_repeats"),
            "iqr_pct": round_or_none(r.extra.get("throughput_iqr_pct")),
            "ratio_reference": r.extra.get("throughput_ratio_reference") or None,
            "ratio": round_or_none(r.extra.get("throughput_ratio")),
            "ratio_q1": round_or_none(r.extra.get("throughput_ratio_q1")),
            "ratio_q3": round_or_none(r.extra.get("throughput_ratio_q3")),
        }
        for r in ordered(rows)
        if r.images_per_sec is not None
    ]


def _correct_top1(store: RunStore, row: ResultRow):
    import numpy as np

    arrays = store.load_predictions(row)
    order = np.argsort(arrays["indices"], kind="stable")
    correct = arrays["top5"][order, 0].astype(np.int64) == arrays["labels"][order].astype(np.int64)
    return arrays["indices"][order], correct


def pair_records(store: RunStore, rows: list[ResultRow]) -> list[dict]:
    """Exact McNemar tests between every two models evaluated at the same size under the same conditions,
    paired image by image from the stored predictions."""
    return mcnemar_pairs(
        rows,
        lambda r: _correct_top1(store, r),
        lambda r: CellId.of(r).shared(),
        "top1",
        "images",
        "correct",
    )


def mcnemar_pairs(rows: list[ResultRow], outcomes, condition, metric: str, units: str, what: str) -> list[dict]:
    """Exact McNemar tests between every two cells at the same size whose ``condition(row)`` is the same, paired
    trial by trial: ``outcomes(row)`` gives each trial's name (an array, the same for both cells) and whether the
    cell succeeded on it. Each record holds both cells' ``metric`` column, the ``n_<units>`` trials and the
    discordant counts ``only_a_<what>`` / ``only_b_<what>``."""
    import numpy as np

    labels = row_labels(rows)
    groups: dict[tuple, list[ResultRow]] = {}
    for r in ordered(rows):
        groups.setdefault((r.img_size, *condition(r)), []).append(r)
    out = []
    for (size, *_), members in sorted(groups.items(), key=lambda kv: kv[0][0]):
        cache = {row_key(r): outcomes(r) for r in members} if len(members) > 1 else {}
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                trials_a, ok_a = cache[row_key(a)]
                trials_b, ok_b = cache[row_key(b)]
                if not np.array_equal(trials_a, trials_b):
                    raise ResultsError(
                        f"the stored cells of {a.model} and {b.model} at {size}px are not the same views of the same "
                        f"{units}; cannot pair them"
                    )
                only_a = int(np.sum(ok_a & ~ok_b))
                only_b = int(np.sum(~ok_a & ok_b))
                value_a, value_b = getattr(a, metric), getattr(b, metric)
                out.append(
                    {
                        "img_size": size,
                        **({"probe": a.probe} if a.probe else {}),
                        "a": labels[row_key(a)],
                        "b": labels[row_key(b)],
                        f"n_{units}": int(len(ok_a)),
                        f"{metric}_a": round_or_none(value_a),
                        f"{metric}_b": round_or_none(value_b),
                        "delta": round_or_none(value_a - value_b),
                        f"only_a_{what}": only_a,
                        f"only_b_{what}": only_b,
                        "p_value": round_or_none(mcnemar_exact(only_a, only_b), 6),
                    }
                )
    return out
