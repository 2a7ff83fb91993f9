"""The best test size of each model, with the sizes its interval cannot tell from it."""

from __future__ import annotations

from cpvt_eval.report.records import best_size_records
from cpvt_eval.results import wilson_interval


def _record(label: str, size: int, correct: int, n: int = 100) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {
        "label": label,
        "model": label,
        "img_size": size,
        "top1": 100 * correct / n,
        "top1_ci95_low": lo,
        "top1_ci95_high": hi,
        "native_size": 224,
    }


def test_best_size_ties_and_exact_ties():
    # 90/100: Wilson 82.6-94.5; 80/100: 71.1-86.7 (overlaps); 60/100: 50.2-69.0 (does not)
    records = [_record("a", s, c) for s, c in ((224, 80), (256, 90), (288, 60), (320, 90))]
    records += [_record("b", 224, 50)]  # one size: no best-size record
    records += [_record("c", 224, 99, 1000), _record("c", 384, 50, 1000)]
    best = {b["label"]: b for b in best_size_records(records)}
    assert set(best) == {"a", "c"}
    a = best["a"]
    assert a["best_size"] == 256  # 320 has the same top-1: the smaller size is named, the other is tied
    assert a["tied_sizes"] == [224, 320] and a["sizes"] == [224, 256, 288, 320]
    assert (a["top1_ci95_low"], a["top1_ci95_high"]) == wilson_interval(90, 100)
    assert best["c"]["best_size"] == 224 and best["c"]["tied_sizes"] == []
