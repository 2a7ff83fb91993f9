"""The README's CI recipe ("In CI"), run as written: the GitHub Actions job is read from the README, and its cpvt-eval
steps run in order, with the job's environment, on generated images and the toy models.

The steps that need the network (installing, downloading the shard) are only checked to be there. The job's
variables are replaced by the test's: ``MODELS`` (a toy model with its checkpoint, and three timing rounds at a
batch of 8 instead of the time budget), ``SIZES``, ``DATA`` (a generated ImageFolder) and ``LIMIT``. Each simulated
job starts from a fresh checkout (no ``runs/current``) with its own ``$GITHUB_STEP_SUMMARY`` file, as on GitHub.
The commands run in this process, through the command line the ``cpvt-eval`` script calls (``cpvt_eval.cli.main``).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cpvt_eval.cli import main
from tests.conftest import make_imagefolder

README = Path(__file__).resolve().parents[1] / "README.md"


def ci_job() -> dict:
    """The one job of the workflow in the README's "In CI" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## In CI\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    (job,) = yaml.safe_load(block)["jobs"].values()
    return job


def expand(command: str, env: dict[str, str]) -> list[str]:
    """The words bash makes of ``command`` for these simple lines: ``$NAME`` and ``${NAME}`` replaced, unquoted
    values split on spaces, quotes removed."""
    return shlex.split(re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], command))


def run_step(command: str, env: dict[str, str], monkeypatch) -> int:
    argv = expand(command, env)
    assert argv[0] == "cpvt-eval", command
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return main(argv[1:])


def weights(toy: torch.nn.Module, favoured: int) -> dict:
    """The toy's weights with the head biased towards one class: every image is predicted ``favoured``, so top-1 is
    the share of that class's images (or 0 when the data has none of it)."""
    state = {k: v.clone() for k, v in toy.state_dict().items()}
    state["head.bias"][favoured] += 100.0
    return state


def test_the_readme_job_runs_as_written(tmp_path, toy_checkpoints, monkeypatch, one_thread):
    job = ci_job()
    steps = job["steps"]
    uses = [s["uses"].split("@")[0] for s in steps if "uses" in s]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"] and "actions/upload-artifact" in uses
    runs = [s["run"] for s in steps if "run" in s]
    assert runs[0] == "pip install -e ." and "--limit $LIMIT" in runs[2]
    evaluate, compare = [r for r in runs if r.startswith("cpvt-eval ")]
    assert evaluate.startswith("cpvt-eval resolution ") and evaluate.endswith("--out runs/current")
    assert compare.startswith("cpvt-eval compare ci/baseline runs/current ")

    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    data = make_imagefolder(tmp_path / "val", (0, 1, 2, 999), per_class=4)
    toy = toy_checkpoints["deit_toy"][0]
    checkpoint = repo / "deit_toy.pth"
    env = {k: str(v) for k, v in job["env"].items()}
    env.update(
        MODELS=f"-m deit_toy -c {checkpoint} --model-arg num_classes=1000 --throughput-batch 8 --throughput-repeats 3",
        SIZES="56 64",
        DATA=str(data),
        LIMIT="12",
    )
    env.pop("HF_TOKEN")  # a secret of the real job; nothing here reaches the hub

    # The baseline: the Evaluate step's command with --out ci/baseline, committed with the repository.
    torch.save({"model": weights(toy, 0)}, checkpoint)  # class 0: 3 of the 12 images
    assert run_step(evaluate.replace("runs/current", "ci/baseline"), env, monkeypatch) == 0

    def job_run(name: str) -> tuple[int, str]:
        shutil.rmtree(repo / "runs", ignore_errors=True)  # a fresh checkout
        summary = tmp_path / f"summary-{name}.md"
        summary.write_text("")  # GitHub makes the file; the steps append to it
        env["GITHUB_STEP_SUMMARY"] = str(summary)
        assert run_step(evaluate, env, monkeypatch) == 0
        return run_step(compare, env, monkeypatch), summary.read_text(encoding="utf-8")

    code, summary = job_run("unchanged")
    assert code == 0
    assert summary.startswith("### cpvt-eval compare: ok\n")
    assert "| deit_toy | 56px | 25.00 | 25.00 | +0.00 |" in summary
    assert "| deit_toy | 64px | 25.00 | 25.00 | +0.00 |" in summary

    torch.save({"model": weights(toy, 500)}, checkpoint)  # a deliberate regression: no image is of class 500
    code, summary = job_run("regression")
    assert code == 1
    assert summary.startswith("### cpvt-eval compare: REGRESSION\n")
    assert "| deit_toy | 56px | 25.00 | 0.00 | -25.00 |" in summary
    assert "top-1 drop (new checkpoint)" in summary

    torch.save({"model": weights(toy, 0)}, checkpoint)
    env["LIMIT"] = "8"  # other images than the baseline's
    code, summary = job_run("other-data")
    assert code == 2
    assert summary.startswith("### cpvt-eval compare: NOT COMPARABLE\n")
    assert "evaluated on different datasets" in summary


@pytest.mark.parametrize("line", ["--json", None])
def test_no_summary_without_the_variable(tmp_path, monkeypatch, line):
    """Outside GitHub Actions (no ``$GITHUB_STEP_SUMMARY``) compare writes nothing but its output."""
    from test_compare import cell, write_run

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.chdir(tmp_path)
    base = write_run(tmp_path / "base", [cell()])
    assert main(["compare", str(base), str(base), *([line] if line else [])]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_summary_that_cannot_be_written_only_warns(tmp_path, monkeypatch, capsys):
    from test_compare import cell, write_run

    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no-such-dir" / "summary.md"))
    base = write_run(tmp_path / "base", [cell()])
    assert main(["compare", str(base), str(base)]) == 0
    assert "cannot append the comparison to $GITHUB_STEP_SUMMARY" in capsys.readouterr().err
