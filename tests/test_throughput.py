"""Throughput rows, FLOP counts with attention, the matmul peak, auto batch and OOM halving, the CLI command."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

import cpvt_eval
from cpvt_eval.cli import app
from cpvt_eval.errors import CpvtEvalError
from cpvt_eval.models.posenc import adapt_to_size
from cpvt_eval.throughput import (
    ThroughputResult,
    TimingPlan,
    TimingSettings,
    count_flops,
    find_max_batch,
    fit_batch_to_budget,
    interleaved_rounds,
    matmul_peak_gflops,
    measure_throughput,
    prepare_for_timing,
    resolve_batch,
    time_models,
)

CPU = torch.device("cpu")


def forced(rounds: int, warmup: int = 1, **over) -> TimingSettings:
    """Settings that time exactly ``rounds`` rounds."""
    return TimingSettings(plan=TimingPlan(warmup=warmup, rounds=rounds), **over)


def toy(name="cpvt_toy", size=56):
    model = cpvt_eval.create_model(name).eval()
    adapt_to_size(model, size)
    return model


def vit_flops(grid: int, dim: int, depth: int, patch: int, classes: int, mlp_ratio: int = 4) -> tuple[float, float]:
    """(linear part, attention part) of a cls-token ViT's FLOPs per image; a multiply-add counts 2."""
    n = grid * grid + 1
    patch_embed = 2 * grid * grid * 3 * patch * patch * dim
    per_block = 2 * n * (3 * dim * dim + dim * dim + 2 * mlp_ratio * dim * dim)
    head = 2 * dim * classes
    attention = depth * 2 * (2 * n * n * dim)  # QK^T and AV, each n*n*dim multiply-adds per block
    return patch_embed + depth * per_block + head, attention


def test_deit_ti_flops_at_224_match_the_published_gmacs():
    model = toy("deit_ti", 224)
    gflops = count_flops(model, 224)
    assert gflops == pytest.approx(2 * 1.26, rel=0.02)
    linear, attention = vit_flops(14, 192, 12, 16, 1000)
    assert gflops * 1e9 == pytest.approx(linear + attention, rel=1e-3)


def test_attention_flops_grow_with_the_token_count_squared():
    model = cpvt_eval.create_model("deit_toy").eval()
    residuals = {}
    for size in (32, 56, 96):
        adapt_to_size(model, size)
        grid = size // 4
        linear, attention = vit_flops(grid, 64, 4, 4, 10)
        residual = count_flops(model, size) * 1e9 - linear
        assert residual == pytest.approx(attention, rel=1e-6)
        residuals[grid * grid + 1] = residual
    n_small, n_big = min(residuals), max(residuals)
    assert residuals[n_big] / residuals[n_small] == pytest.approx((n_big / n_small) ** 2, rel=1e-9)


def test_the_default_flop_counter_misses_the_fused_attention_this_count_includes():
    model = toy("deit_toy", 56)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, 56, 56))
    linear, attention = vit_flops(14, 64, 4, 4, 10)
    assert counter.get_total_flops() == pytest.approx(linear, rel=1e-3)  # what torch alone sees on CPU
    assert count_flops(model, 56) * 1e9 == pytest.approx(linear + attention, rel=1e-6)


def test_a_throughput_row_carries_all_its_fields():
    model = toy()
    r = measure_throughput(model, 56, CPU, forced(3, batch_size=4), name="cpvt_toy")
    d = r.to_dict()
    for key, value in d.items():
        assert value is not None or key == "budget_s", key  # a forced count (repeats) has no budget
    assert (r.rounds_policy, r.budget_s, r.min_rounds, r.interleaved, r.ratio) == ("fixed", None, 3, 1, 1.0)
    assert r.ms_per_batch_min <= r.ms_per_batch_q1 <= r.ms_per_batch <= r.ms_per_batch_q3 <= r.ms_per_batch_max
    assert (r.model, r.img_size, r.batch_size, r.repeats, r.warmup, r.dtype) == ("cpvt_toy", 56, 4, 3, 1, "fp32")
    assert (r.device, r.threads, r.batch_policy, r.oom_retries) == ("cpu", torch.get_num_threads(), "fixed", 0)
    assert r.device_name and not r.channels_last and not r.compile and r.load_avg >= 0
    assert r.ms_per_batch_min <= r.ms_per_batch <= r.ms_per_batch_max
    assert r.images_per_sec == pytest.approx(4 / (r.ms_per_batch / 1000))
    assert r.spread_pct == pytest.approx(100 * (r.ms_per_batch_max - r.ms_per_batch_min) / r.ms_per_batch)
    assert r.params == sum(p.numel() for p in model.parameters())
    assert r.gflops_per_image == pytest.approx(count_flops(model, 56))
    assert r.achieved_gflops_per_sec == pytest.approx(r.gflops_per_image * r.images_per_sec)
    assert r.peak_gflops_per_sec == matmul_peak_gflops(CPU, "fp32") > 0
    assert r.peak_fraction == pytest.approx(r.achieved_gflops_per_sec / r.peak_gflops_per_sec)
    assert set(d) == {f for f in ThroughputResult.__dataclass_fields__}


def test_matmul_peak_is_measured_per_dtype_and_cached():
    fp32 = matmul_peak_gflops(CPU, "fp32", n=256, repeats=2)
    assert fp32 > 0 and matmul_peak_gflops(CPU, "fp32", n=256, repeats=2) == fp32
    assert matmul_peak_gflops(CPU, "bf16", n=256, repeats=2) > 0
    with pytest.raises(CpvtEvalError):
        matmul_peak_gflops(CPU, "fp64")


def test_channels_last_and_bf16_are_recorded():
    settings = forced(2, batch_size=2, dtype="bf16", channels_last=True, flops=False)
    r = measure_throughput(toy(), 56, CPU, settings)
    assert (r.dtype, r.channels_last, r.gflops_per_image, r.peak_gflops_per_sec) == ("bf16", True, None, None)
    assert r.images_per_sec > 0


def test_compile_times_the_compiled_module():
    model = toy()
    assert isinstance(prepare_for_timing(model, compile=True), torch._dynamo.eval_frame.OptimizedModule)
    r = measure_throughput(model, 56, CPU, forced(2, batch_size=2, compile=True, compile_backend="eager", flops=False))
    assert r.compile and r.images_per_sec > 0


class OOMAbove(torch.nn.Module):
    """A fake allocator error: ``torch.OutOfMemoryError`` for batches above ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.proj = torch.nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake) at batch {x.shape[0]}")
        return self.proj(x.mean(dim=(2, 3)))


def test_oom_halves_the_timed_batch_and_records_it():
    r = measure_throughput(OOMAbove(5), 8, CPU, forced(2, batch_size=16, flops=False))
    assert (r.batch_size, r.oom_retries) == (4, 2)
    with pytest.raises(CpvtEvalError, match="not even one 8px image"):
        measure_throughput(OOMAbove(0), 8, CPU, forced(1, batch_size=4, flops=False))


def test_auto_batch_is_the_largest_power_of_two_that_fits():
    assert find_max_batch(OOMAbove(37), 8, CPU) == 32
    assert find_max_batch(OOMAbove(64), 8, CPU) == 64
    assert find_max_batch(OOMAbove(10**6), 8, CPU, cap=128) == 128
    with pytest.raises(CpvtEvalError, match="not even one"):
        find_max_batch(OOMAbove(0), 8, CPU)


def test_resolve_batch():
    model = OOMAbove(100)
    assert resolve_batch("32", model, 8, CPU, "fp32", False) == (32, "fixed")
    assert resolve_batch("auto", model, 8, CPU, "fp32", False) == (64, "auto-cpu-default")
    for bad in ("0", "-3", "big", "1.5"):
        with pytest.raises(CpvtEvalError, match="--batch-size"):
            resolve_batch(bad, model, 8, CPU, "fp32", False)


runner = CliRunner()


def test_throughput_command_json_rows():
    args = ["throughput", "--model", "cpvt_toy", "deit_toy", "--sizes", "56", "64", "--batch-size", "2"]
    result = runner.invoke(app, [*args, "--warmup", "1", "--repeats", "2", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    # size by size: the models of a size are timed together
    assert [(r["model"], r["img_size"]) for r in rows] == [
        ("cpvt_toy", 56),
        ("deit_toy", 56),
        ("cpvt_toy", 64),
        ("deit_toy", 64),
    ]
    for r in rows:
        assert r["batch_size"] == 2 and r["repeats"] == 2 and r["warmup"] == 1 and r["device"] == "cpu"
        assert r["images_per_sec"] > 0 and r["gflops_per_image"] > 0 and r["peak_fraction"] > 0
        assert (r["rounds_policy"], r["budget_s"], r["interleaved"], r["ratio_reference"]) == (
            "fixed",
            None,
            2,
            "cpvt_toy",
        )
        assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
    assert rows[0]["ratio"] == 1.0 and rows[2]["ratio"] == 1.0  # the reference against itself
    # the attention part makes 64 px cost more than (64/56)^2 times 56 px
    assert rows[2]["gflops_per_image"] / rows[0]["gflops_per_image"] > (64 / 56) ** 2


def test_throughput_command_budget_is_recorded():
    args = ["throughput", "-m", "deit_toy", "-s", "32", "-b", "1", "--warmup", "0", "--budget", "0.01", "--json"]
    result = runner.invoke(app, [*args, "--no-flops", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["rounds_policy"], row["budget_s"], row["min_rounds"]) == ("budget", 0.01, 3)
    assert row["repeats"] >= 3


def test_throughput_command_table():
    result = runner.invoke(
        app, ["throughput", "-m", "cpvt_toy", "-s", "56", "-b", "2", "--repeats", "1", "--warmup", "0", "--no-flops"]
    )
    assert result.exit_code == 0, result.output
    assert "model-only throughput" in result.output and "compile=False" in result.output
    assert "1 rounds (forced)" in result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no_such_model"], "unknown model"),
        (["--model", "cpvt_toy", "--sizes", "57"], "patch size"),
        (["--model", "cpvt_toy", "--batch-size", "lots"], "--batch-size"),
        (["--model", "cpvt_toy", "--dtype", "fp64"], "--dtype"),
        (["--model", "cpvt_toy", "--device", "tpu9"], "device"),
    ],
)
def test_throughput_command_bad_input_exits_2(extra, message):
    result = runner.invoke(app, ["throughput", *extra, "--repeats", "1", "--warmup", "0"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_resolution_rows_carry_the_throughput_figures(imagefolder, toy_checkpoints, tmp_path):
    from cpvt_eval.config import RunConfig
    from cpvt_eval.jobs.run import evaluate as run_resolution
    from cpvt_eval.results import RunStore
    from cpvt_eval.throughput import ROW_EXTRA_FIELDS

    cfg = RunConfig(
        models=("cpvt_toy",),
        sizes=(56,),
        data=imagefolder,
        out=tmp_path / "run",
        checkpoints={"cpvt_toy": str(toy_checkpoints["cpvt_toy"][1])},
        model_args={"cpvt_toy": {"num_classes": 1000}},
        batch_size=4,
        device="cpu",
        workers=0,
    )
    run_resolution(cfg, throughput_batch=2, throughput_warmup=1, throughput_repeats=2)
    (row,) = RunStore(cfg.out).rows()  # read back from disk: the figures survive the run directory
    assert row.images_per_sec > 0 and row.throughput_batch == 2 and row.dtype == "fp32"
    model = cpvt_eval.create_model("cpvt_toy", num_classes=1000).eval()
    assert row.gflops_per_image == pytest.approx(count_flops(model, 56), rel=1e-3)
    for name in ROW_EXTRA_FIELDS:
        if name != "budget_s":  # a forced count has no budget
            assert row.extra[f"throughput_{name}"] is not None, name
    assert row.extra["throughput_repeats"] == 2 and row.extra["throughput_threads"] == torch.get_num_threads()
    assert (row.extra["throughput_rounds_policy"], row.extra["throughput_budget_s"]) == ("fixed", None)
    assert row.extra["eval_batch"] == 4 and row.extra["eval_oom_retries"] == 0


def test_resolution_times_the_models_of_a_size_together_within_a_budget(
    imagefolder, toy_checkpoints, tmp_path, monkeypatch
):
    from cpvt_eval.config import RunConfig
    from cpvt_eval.jobs import run as resolution
    from cpvt_eval.results import RunStore

    calls = []
    real = resolution.time_models

    def spy(models, size, device, settings):
        calls.append(([name for name, _ in models], size, settings.fit_budget))
        assert (settings.batch_size, settings.dtype, settings.plan.budget_s) == (4, "fp32", 0.01)
        return real(models, size, device, settings)

    monkeypatch.setattr(resolution, "time_models", spy)
    names = ("cpvt_toy", "deit_toy")
    cfg = RunConfig(
        models=names,
        sizes=(32, 56),
        data=imagefolder,
        out=tmp_path / "run",
        checkpoints={n: str(toy_checkpoints[n][1]) for n in names},
        model_args={n: {"num_classes": 1000} for n in names},
        batch_size=4,
        device="cpu",
        workers=0,
    )
    timing = dict(throughput_warmup=0, throughput_budget=0.01)
    resolution.evaluate(cfg, **timing)
    # one interleaved timing per size, of every model due at it, the batch fitted to the budget
    assert calls == [(list(names), 32, True), (list(names), 56, True)]
    rows = RunStore(cfg.out).rows()
    assert [(r.model, r.img_size) for r in rows] == [(n, s) for s in (32, 56) for n in names]
    for r in rows:
        x = r.extra
        assert (x["throughput_rounds_policy"], x["throughput_budget_s"], x["throughput_min_rounds"]) == (
            "budget",
            0.01,
            3,
        )
        assert x["throughput_repeats"] >= 3 and x["throughput_interleaved"] == 2
        assert x["throughput_ratio_reference"] == "cpvt_toy"
        assert x["throughput_ms_per_batch_min"] <= x["throughput_ms_per_batch_q1"] <= x["throughput_ms_per_batch"]
        assert x["throughput_ms_per_batch"] <= x["throughput_ms_per_batch_q3"] <= x["throughput_ms_per_batch_max"]
        assert x["throughput_iqr_pct"] >= 0 and x["throughput_spread_pct"] >= x["throughput_iqr_pct"]
    # timed while the models were adapted to the size: the 56 px rows count 56 px FLOPs
    model = cpvt_eval.create_model("deit_toy", num_classes=1000).eval()
    adapt_to_size(model, 56)
    assert rows[3].gflops_per_image == pytest.approx(count_flops(model, 56), rel=1e-3)
    report = (cfg.out / "results.md").read_text()
    assert "relative to `cpvt_toy`, timed in the same interleaved rounds" in report
    assert "1 (ref.)" in report and "budget 0.01 s per model" in report
    # a rerun of finished cells times nothing
    resolution.evaluate(cfg, **timing)
    assert len(calls) == 2


class FakeClock:
    """A clock that moves only when a fake forward says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_forwards(clock: FakeClock, costs: dict[str, float], log: list[str]):
    def make(name):
        def forward():
            log.append(name)
            clock.now += costs[name]

        return forward

    return [make(name) for name in costs]


def test_rounds_interleave_the_models():
    clock, log = FakeClock(), []
    times = interleaved_rounds(
        fake_forwards(clock, {"A": 1.0, "B": 2.0}, log), TimingPlan(warmup=2, rounds=3), clock=clock
    )
    assert log == ["A", "A", "B", "B"] + ["A", "B"] * 3  # warm-up each, then one forward of each per round
    assert times == [[1.0] * 3, [2.0] * 3]


def test_the_budget_stops_the_rounds():
    clock, log = FakeClock(), []
    plan = TimingPlan(warmup=0, budget_s=10.0, min_rounds=1)
    times = interleaved_rounds(fake_forwards(clock, {"A": 1.0, "B": 1.0}, log), plan, clock=clock)
    # 2 s per round; the two models' budget of 2 x 10 s is spent after 10 rounds
    assert len(times[0]) == len(times[1]) == 10 and clock.now == 20.0


def test_the_minimum_and_the_cap_of_rounds_hold_whatever_the_budget():
    clock = FakeClock()
    slow = TimingPlan(warmup=0, budget_s=0.5, min_rounds=3)
    assert len(interleaved_rounds(fake_forwards(clock, {"A": 5.0}, []), slow, clock=clock)[0]) == 3
    fast = TimingPlan(warmup=0, budget_s=100.0, min_rounds=3, max_rounds=7)
    assert len(interleaved_rounds(fake_forwards(clock, {"A": 0.001}, []), fast, clock=clock)[0]) == 7


def test_repeats_force_the_count():
    clock = FakeClock()
    plan = TimingPlan(warmup=0, rounds=2, budget_s=0.001, min_rounds=5)
    assert len(interleaved_rounds(fake_forwards(clock, {"A": 9.0}, []), plan, clock=clock)[0]) == 2
    assert plan.policy == "fixed" and TimingPlan().policy == "budget"
    for bad in (dict(rounds=0), dict(budget_s=0), dict(min_rounds=0), dict(min_rounds=9, max_rounds=3)):
        with pytest.raises(CpvtEvalError):
            TimingPlan(**bad)


class Costly(torch.nn.Module):
    """A module whose forward advances a fake clock by ``cost`` seconds, or by ``costs[round]``, and logs its name."""

    def __init__(self, name, clock, log, costs):
        super().__init__()
        self.name, self.clock, self.log, self.costs = name, clock, log, list(costs)
        self.proj = torch.nn.Linear(3, 2)

    def forward(self, x):
        self.log.append(self.name)
        self.clock.now += self.costs.pop(0) if len(self.costs) > 1 else self.costs[0]
        return self.proj(x.mean(dim=(2, 3)))


def test_interleaved_results_carry_the_spread_the_rounds_and_the_ratio():
    clock, log = FakeClock(), []
    # warm-up (1), then 4 rounds; B is half as fast as A in every round, both drift together
    a = Costly("A", clock, log, [1.0, 1.0, 2.0, 1.0, 4.0])
    b = Costly("B", clock, log, [1.0, 2.0, 4.0, 2.0, 8.0])
    settings = forced(4, batch_size=2, flops=False)
    ra, rb = time_models([("A", a), ("B", b)], 8, CPU, settings, clock=clock)
    assert log == ["A", "B"] + ["A", "B"] * 4
    assert (ra.repeats, ra.rounds_policy, ra.budget_s, ra.interleaved, ra.warmup) == (4, "fixed", None, 2, 1)
    assert ra.ms_per_batch == 1500.0 and rb.ms_per_batch == 3000.0  # medians of 1,2,1,4 and 2,4,2,8
    assert (ra.ms_per_batch_min, ra.ms_per_batch_max) == (1000.0, 4000.0)
    assert (ra.ms_per_batch_q1, ra.ms_per_batch_q3) == (1000.0, 2500.0)
    assert ra.iqr_pct == pytest.approx(100.0) and ra.spread_pct == pytest.approx(200.0)
    assert ra.images_per_sec == pytest.approx(2 / 1.5)
    # the drift is common to both, so every per-round ratio is exactly 0.5 although the times vary 4x
    assert (rb.ratio, rb.ratio_q1, rb.ratio_q3, rb.ratio_min, rb.ratio_max) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert (ra.ratio, ra.ratio_reference, rb.ratio_reference, rb.model) == (1.0, "A", "A", "B")


def test_the_batch_is_fitted_to_the_budget():
    clock = FakeClock()
    probe = Costly("A", clock, [], [0.8])  # 0.8 s per forward of the 8-image probe (the fake ignores the batch)
    plan = TimingPlan(budget_s=3.0, min_rounds=3)  # 1 s per forward at most: 0.1 s per image -> 8 images
    assert fit_batch_to_budget([probe], 8, CPU, 64, "fp32", plan, clock=clock) == 8
    assert fit_batch_to_budget([probe], 8, CPU, 4, "fp32", plan, clock=clock) == 4  # at most the probe: kept
    cheap = Costly("A", clock, [], [0.2])  # 0.025 s per image -> 40 images fit: 64 halves once
    assert fit_batch_to_budget([cheap], 8, CPU, 64, "fp32", plan, clock=clock) == 32
    slow = Costly("A", clock, [], [80.0])  # never below the probe, however slow
    assert fit_batch_to_budget([slow], 8, CPU, 64, "fp32", plan, clock=clock) == 8
    forced = TimingPlan(rounds=2)
    assert fit_batch_to_budget([probe], 8, CPU, 64, "fp32", forced, clock=clock) == 64


@pytest.mark.parametrize(
    "options, policy, budget, rounds",
    [(["--throughput-budget", "0.01"], "budget", 0.01, None), (["--throughput-repeats", "2"], "fixed", None, 2)],
)
def test_resolution_cli_throughput_options(imagefolder, toy_checkpoints, tmp_path, options, policy, budget, rounds):
    from cpvt_eval.results import RunStore

    argv = ["resolution", "-m", "cpvt_toy", "-s", "32", "--data", str(imagefolder), "--out", str(tmp_path / "run")]
    argv += ["--checkpoint", f"cpvt_toy={toy_checkpoints['cpvt_toy'][1]}", "--model-arg", "num_classes=1000"]
    result = runner.invoke(app, [*argv, "-j", "0", "-b", "4", *options])
    assert result.exit_code == 0, result.output
    (row,) = RunStore(tmp_path / "run").rows()
    assert (row.extra["throughput_rounds_policy"], row.extra["throughput_budget_s"]) == (policy, budget)
    assert row.extra["throughput_repeats"] == rounds if rounds else row.extra["throughput_repeats"] >= 3


def test_the_report_marks_ratios_equal_within_noise():
    from cpvt_eval.report.sections import _ratio_cell

    base = {"model": "cpvt_ti", "ratio_reference": "deit_ti"}
    assert _ratio_cell({**base, "ratio": 0.98, "ratio_q1": 0.95, "ratio_q3": 1.01}) == "0.980 [0.95–1.01]~"
    assert _ratio_cell({**base, "ratio": 0.90, "ratio_q1": 0.88, "ratio_q3": 0.93}) == "0.900 [0.88–0.93]"
    assert _ratio_cell({**base, "model": "deit_ti", "ratio": 1.0, "ratio_q1": 1.0, "ratio_q3": 1.0}) == "1 (ref.)"
    assert _ratio_cell({**base, "ratio": None}) == _ratio_cell(None) == "–"


def test_time_models_fits_the_batch_to_the_budget_and_says_so():
    clock, log = FakeClock(), []
    # 0.75 s per forward of A whatever the batch: the 8-image probe says 3/32 s per image, and 1 s per forward
    # (3 rounds in the budget of 3 s) fits 8 images, not 16
    a, b = Costly("A", clock, log, [0.75]), Costly("B", clock, log, [0.25])
    settings = TimingSettings(plan=TimingPlan(warmup=1, budget_s=3.0, min_rounds=3), fit_budget=True, flops=False)
    ra, rb = time_models([("A", a), ("B", b)], 8, CPU, settings, clock=clock)
    assert (ra.batch_size, ra.batch_policy, rb.batch_size) == (8, "budget", 8)
    assert ra.repeats == rb.repeats == 6  # 1 s per round; the budget of 2 x 3 s is spent after 6 rounds
    # without the fit, the batch stays as given
    (rc,) = time_models([("A", a)], 8, CPU, replace(settings, fit_budget=False, batch_size=16), clock=clock)
    assert (rc.batch_size, rc.batch_policy) == (16, "fixed")


class TickingClock:
    """A clock that advances ``step`` seconds every time it is read: every timed forward lasts ``step`` seconds."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now - self.step


@pytest.mark.parametrize(
    "options, batch, policy, rounds",
    [
        # the 8-image probe reads 0.5 s: 1/16 s per image; 3 forwards in 3 s fit 16 images, in 10 s 32 (of 64)
        (["--budget", "3"], 16, "budget", 3),  # 2.5 s per round (5 clock reads) against 2 x 3 s: 3 rounds
        (["--budget", "10"], 32, "budget", 8),  # against 2 x 10 s: 8 rounds
        (["--budget", "3", "-b", "64"], 64, "fixed", 3),  # a batch given is kept
        (["--repeats", "2"], 64, "fixed", 2),  # a forced count keeps the batch
    ],
)
def test_throughput_command_fits_the_batch_to_the_budget(monkeypatch, options, batch, policy, rounds):
    import cpvt_eval.throughput as throughput

    real, seen = throughput.time_models, []

    def with_a_ticking_clock(models, size, device, settings):
        seen.append(settings)
        return real(models, size, device, settings, clock=TickingClock(0.5))

    monkeypatch.setattr(throughput, "time_models", with_a_ticking_clock)
    args = ["throughput", "-m", "deit_toy", "cpvt_toy", "-s", "56", "--no-flops", "--device", "cpu", "--json"]
    result = runner.invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["batch_size"], r["batch_policy"], r["repeats"]) for r in rows] == [(batch, policy, rounds)] * 2
    assert seen[0].fit_budget == ("-b" not in options) and seen[0].plan.warmup == 1


def test_throughput_json_is_quiet_on_a_non_terminal_stderr():
    args = ["throughput", "-m", "deit_toy", "-s", "56", "-b", "2", "--repeats", "1", "--no-flops", "--device", "cpu"]
    quiet = runner.invoke(app, [*args, "--json"])  # the runner's stderr is not a terminal
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)[0]["model"] == "deit_toy"
    table = runner.invoke(app, args)  # a table: the progress lines stay
    assert table.exit_code == 0 and "56px: deit_toy" in table.stderr
