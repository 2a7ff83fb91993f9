"""`cpvt-eval compare`: cell matching, tolerances and the CI exit codes (0 ok, 1 regression, 2 not comparable)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_results import make_row
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.errors import ResultsError
from cpvt_eval.report import compare_runs
from cpvt_eval.results import RunStore

N = 1000


def cell(model="cpvt_toy", size=56, correct=700, ips=100.0, fingerprint="f" * 16, **over):
    return make_row(
        model=model,
        img_size=size,
        n_images=N,
        correct1=correct,
        top1=round(100 * correct / N, 4),
        images_per_sec=ips,
        dataset_fingerprint=fingerprint,
        **over,
    )


def write_run(root: Path, rows) -> Path:
    store = RunStore(root)
    for r in rows:
        store.append(r)
    return root


def invoke(base: Path, cur: Path, *extra: str):
    return CliRunner().invoke(app, ["compare", str(base), str(cur), *extra])


@pytest.fixture
def baseline(tmp_path):
    return write_run(tmp_path / "base", [cell(), cell(size=64, correct=650, ips=80.0), cell(model="deit_toy")])


def test_identical_runs_pass(tmp_path, baseline):
    current = write_run(tmp_path / "cur", [cell(), cell(size=64, correct=650, ips=80.0), cell(model="deit_toy")])
    result = invoke(baseline, current)
    assert result.exit_code == 0, result.output
    assert "| cpvt_toy | 64px | 65.00 | 65.00 | +0.00 |" in result.stdout


@pytest.mark.parametrize(
    "correct,ips,code",
    [
        (699, 100.0, 0),  # a drop of exactly 0.1 points is within --max-drop 0.1
        (698, 100.0, 1),  # 0.2 points
        (720, 100.0, 0),  # better
        (700, 90.0, 0),  # exactly 10% slower is within --max-slowdown 0.1
        (700, 89.9, 1),  # more than 10% slower
        (700, None, 0),  # no throughput in the current run: nothing to compare
    ],
)
def test_tolerances_decide_the_exit_code(tmp_path, baseline, correct, ips, code):
    current = write_run(tmp_path / "cur", [cell(correct=correct, ips=ips)])
    result = invoke(baseline, current, "--max-drop", "0.1", "--max-slowdown", "0.1", "--allow-missing")
    assert result.exit_code == code, result.output


def test_tolerances_are_options(tmp_path, baseline):
    current = write_run(tmp_path / "cur", [cell(correct=690, ips=50.0)])
    assert invoke(baseline, current, "--allow-missing").exit_code == 1
    assert invoke(baseline, current, "--max-drop", "1.0", "--max-slowdown", "0.5", "--allow-missing").exit_code == 0


def test_json_mode_reports_each_cell(tmp_path, baseline):
    current = write_run(tmp_path / "cur", [cell(correct=690), cell(model="vit_new")])
    result = invoke(baseline, current, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert result.stderr == ""
    assert doc["ok"] is False
    (c,) = doc["cells"]
    assert (c["model"], c["img_size"], c["top1_delta"], c["accuracy_failed"], c["speed_failed"]) == (
        "cpvt_toy",
        56,
        -1.0,
        True,
        False,
    )
    assert doc["only_in_baseline"] == ["cpvt_toy@64px", "deit_toy@56px"]
    assert doc["only_in_current"] == ["vit_new@56px"]


def test_changed_checkpoint_is_still_compared_and_flagged(tmp_path, baseline):
    current = write_run(tmp_path / "cur", [cell(checkpoint_sha256="cd" * 32)])
    result = invoke(baseline, current, "--allow-missing")
    assert result.exit_code == 0
    assert "new checkpoint" in result.stdout


def test_rows_file_and_results_json_are_accepted(tmp_path, baseline):
    current = write_run(tmp_path / "cur", [cell(correct=500)])
    assert invoke(baseline / "rows.jsonl", current / "rows.jsonl").exit_code == 1
    doc = {"rows": [cell().to_dict()]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert invoke(tmp_path / "results.json", baseline).exit_code == 0


@pytest.mark.parametrize(
    "rows,message",
    [
        ([cell(model="other")], "share no cell"),
        ([cell(size=72)], "share no cell"),
        ([cell(crop_pct=1.0)], "share no cell"),
        ([cell(fingerprint="0" * 16)], "different datasets"),
    ],
)
def test_incomparable_runs_exit_2(tmp_path, baseline, rows, message):
    current = write_run(tmp_path / "cur", rows)
    result = invoke(baseline, current)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_or_empty_runs_exit_2(tmp_path, baseline):
    result = invoke(baseline, tmp_path / "nope")
    assert result.exit_code == 2 and "run directory not found" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "rows.jsonl").write_text("")
    result = invoke(empty, baseline)
    assert result.exit_code == 2 and "no finished cells" in result.stderr
    result = invoke(baseline, baseline, "--max-slowdown", "1.5")
    assert result.exit_code == 2 and "--max-slowdown" in result.stderr


def test_ambiguous_cells_are_refused():
    rows = [cell(), cell(checkpoint_sha256="cd" * 32)]
    with pytest.raises(ResultsError, match="twice"):
        compare_runs(rows, [cell()])


def test_delta_is_computed_from_counts():
    result = compare_runs([cell(correct=701)], [replace(cell(correct=700), top1=12.3)], max_drop=0.1)
    assert result.ok  # 0.1 points from the counts, whatever the rounded top1 column says
    assert result.cells[0].top1_delta == pytest.approx(-0.1)


def timed(ips: float, q1_ips: float, q3_ips: float, **over):
    """A cell whose timed rounds (batch 10) had the middle half of their images/s between ``q1_ips`` and ``q3_ips``."""
    batch = 10
    extra = {
        "throughput_ms_per_batch_q1": 1000 * batch / q3_ips,  # the fast end of the rounds: the shortest times
        "throughput_ms_per_batch_q3": 1000 * batch / q1_ips,
    }
    return cell(ips=ips, throughput_batch=batch, extra=extra, **over)


def test_throughput_is_not_gated_by_default(tmp_path, baseline):
    current = write_run(tmp_path / "cur", [cell(ips=20.0)])  # five times slower, no spread recorded
    result = invoke(baseline, current, "--json", "--allow-missing")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["max_slowdown"] is None
    (c,) = doc["cells"]
    assert c["speed_ratio"] == pytest.approx(0.2) and c["speed_failed"] is False and c["status"] == "ok"
    assert "not gated" in invoke(baseline, current, "--allow-missing").stderr
    assert invoke(baseline, current, "--max-slowdown", "0.1", "--allow-missing").exit_code == 1


def test_a_slowdown_within_the_spread_of_both_runs_passes_as_noise(tmp_path):
    base = write_run(tmp_path / "base", [timed(100.0, 85.0, 110.0)])
    noisy = write_run(tmp_path / "noisy", [timed(80.0, 70.0, 88.0)])  # 20% slower; IQRs 85-110 and 70-88 overlap
    result = invoke(base, noisy, "--max-slowdown", "0.1")
    assert result.exit_code == 0, result.output
    assert "ok (slower, within noise)" in result.stdout
    assert "within the measured spread" in result.stderr and "cpvt_toy@56px" in result.stderr
    (c,) = json.loads(invoke(base, noisy, "--max-slowdown", "0.1", "--json").stdout)["cells"]
    assert (c["speed_failed"], c["speed_within_noise"]) == (False, True)
    assert c["images_per_sec_iqr_baseline"] == pytest.approx([85.0, 110.0])
    assert c["images_per_sec_iqr_current"] == pytest.approx([70.0, 88.0])


def test_a_slowdown_beyond_the_spread_fails(tmp_path):
    base = write_run(tmp_path / "base", [timed(100.0, 95.0, 105.0)])
    slow = write_run(tmp_path / "slow", [timed(80.0, 78.0, 82.0)])  # IQRs 95-105 and 78-82 are apart
    result = invoke(base, slow, "--max-slowdown", "0.1")
    assert result.exit_code == 1, result.output
    assert "| slower" in result.stdout
    # within the tolerance: ok whatever the spread
    assert invoke(base, slow, "--max-slowdown", "0.25").exit_code == 0
    # a run without quartiles (older rows) cannot claim noise
    plain = write_run(tmp_path / "plain", [cell(ips=80.0)])
    assert invoke(base, plain, "--max-slowdown", "0.1").exit_code == 1


@pytest.mark.parametrize(
    "base, cur",
    [
        (timed(100.0, 95.0, 105.0), timed(60.0, 40.0, 90.0)),  # the current rounds spread over 83% of their median
        (timed(100.0, 70.0, 130.0), timed(50.0, 48.0, 52.0)),  # the baseline's over 60%
    ],
)
def test_a_cell_with_unstable_rounds_is_never_gated(tmp_path, base, cur):
    b, c = write_run(tmp_path / "base", [base]), write_run(tmp_path / "cur", [cur])
    result = invoke(b, c, "--max-slowdown", "0.1")
    assert result.exit_code == 0, result.output  # 40-50% slower, yet not a regression: the timing cannot tell
    assert "ok (timing unstable, not gated)" in result.stdout
    assert "timing unstable" in result.stderr and "cpvt_toy@56px" in result.stderr
    (doc,) = json.loads(invoke(b, c, "--max-slowdown", "0.1", "--json").stdout)["cells"]
    assert (doc["speed_unstable"], doc["speed_failed"], doc["speed_within_noise"]) == (True, False, False)
    assert max(doc["images_per_sec_spread_baseline"], doc["images_per_sec_spread_current"]) > 0.25
    # not asked to gate: nothing is marked
    (doc,) = json.loads(invoke(b, c, "--json").stdout)["cells"]
    assert doc["speed_unstable"] is False and doc["status"] == "ok"


def test_rounds_spread_over_exactly_a_quarter_still_gate(tmp_path):
    base = write_run(tmp_path / "base", [timed(100.0, 90.0, 115.0)])  # IQR 25 images/s: a quarter, not over
    slow = write_run(tmp_path / "slow", [timed(50.0, 49.0, 51.0)])
    result = invoke(base, slow, "--max-slowdown", "0.1")
    assert result.exit_code == 1 and "| slower" in result.stdout


def test_rows_without_quartiles_keep_the_ratio_gate(tmp_path):
    """Rows of older runs carry no quartiles: neither noise nor instability can be claimed, the ratio decides."""
    base = write_run(tmp_path / "base", [cell(ips=100.0)])
    assert invoke(base, write_run(tmp_path / "a", [cell(ips=80.0)]), "--max-slowdown", "0.1").exit_code == 1
    assert invoke(base, write_run(tmp_path / "b", [cell(ips=95.0)]), "--max-slowdown", "0.1").exit_code == 0
    unstable_now = write_run(tmp_path / "c", [timed(60.0, 40.0, 90.0)])  # one side unstable: not gated
    assert invoke(base, unstable_now, "--max-slowdown", "0.1").exit_code == 0


def test_the_load_average_of_each_run_is_reported(tmp_path):
    base = write_run(tmp_path / "base", [cell(extra={"throughput_load_avg": 0.4})])
    cur = write_run(tmp_path / "cur", [cell(extra={"throughput_load_avg": 7.5})])
    (c,) = json.loads(invoke(base, cur, "--json").stdout)["cells"]
    assert (c["load_avg_baseline"], c["load_avg_current"]) == (0.4, 7.5)
