"""The first hour of a new user: a first result by name, errors that are one line with the way out, results on stdout.

One test (or more) per finding of that first hour: the shipped toys load by name, the README says where CPVT weights
come from, every click usage error is one ``error:`` line, cheap checks come before any weights are fetched, paths
and empty values say what they are, an interrupt says what it keeps, the models table says at which size it counts
GFLOPs, and the tables a command exists to print are on stdout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import make_image, make_imagefolder
from typer.testing import CliRunner

from cpvt_eval.cli import app, main
from cpvt_eval.models.toys import CLASSES, shipped_weights

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = ["--no-throughput", "--workers", "0", "--batch-size", "10", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The failed command's stderr: exactly one line, starting with ``error:``, and no traceback anywhere."""
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "╭" not in result.output and "Usage:" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo's world as `cpvt-eval demo` materialises it: one folder per class name, 2 images each."""
    from cpvt_eval.demo.dataset import materialize

    root, _ = materialize(2, 0, tmp_path_factory.mktemp("world"))
    return root


# --- 1. the shipped toys load by name --------------------------------------------------------------------------------


def test_the_shipped_toys_run_by_name_on_the_demos_folder(world, tmp_path):
    out = tmp_path / "run"
    result = invoke("resolution", "-m", "deit_toy", "cpvt_toy", "-s", "56", "64", "--data", world, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    cells = sorted((r["model"], r["img_size"]) for r in rows)
    assert cells == [(m, s) for m in ("cpvt_toy", "deit_toy") for s in (56, 64)]
    for r in rows:
        assert r["checkpoint"] == str(shipped_weights(r["model"]))  # the weights the demo ships, found by name
        assert r["label_space"].startswith("custom-10:") and r["n_images"] == 2 * len(CLASSES)
        assert r["top1"] >= 50.0  # the trained toys on their own world's held-out images, not chance
    # the classes are those of the weights: the same label space as the demo's own run
    from cpvt_eval.data import from_names

    assert rows[0]["label_space"] == from_names(CLASSES, "").id


def test_a_toy_without_shipped_weights_still_needs_a_checkpoint(world, tmp_path):
    assert shipped_weights("cpvt_toy_gap") is None and shipped_weights("deit_toy_sincos") is None
    result = invoke("resolution", "-m", "cpvt_toy_gap", "-s", "56", "--data", world, "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 2
    assert "cpvt_toy_gap has no published weights: pass a checkpoint" in error_line(result)


def test_models_lists_the_toys_marked_and_explains_no_all_flag():
    table = invoke("models", "deit_ti", "deit_toy", "cpvt_toy_gap")
    assert table.exit_code == 0, table.output
    text = table.stdout
    assert "deit_toy" in text and "toy" in text and "shipped in the package" in text and "checkpoint needed" in text
    assert "the toys whose weights are shipped in the package load them by name" in " ".join(text.split())
    rows = {r["name"]: r for r in json.loads(invoke("models", "deit_ti", "deit_toy", "cpvt_toy_gap", "--json").stdout)}
    assert rows["deit_toy"]["toy"] and not rows["deit_tiny_patch16_224"]["toy"]
    assert rows["deit_toy"]["default_weights"] == str(shipped_weights("deit_toy"))
    assert rows["cpvt_toy_gap"]["default_weights"] is None
    listed = invoke("models", "--help").output
    assert "--all" not in listed and "toy" in listed


# --- 2. the README says where CPVT checkpoints come from -----------------------------------------------------------


def test_readme_gives_the_public_peg_command_and_it_passes_the_checks():
    from cpvt_eval.config import RunConfig
    from cpvt_eval.jobs.assemble import check_models

    text = README.read_text()
    assert "No official plain CPVT-Ti/S/B weights were published" in text
    (command,) = set(re.findall(r"cpvt-eval resolution -m deit_ti twins_pcpvt_small -s [\d ]+", text))
    sizes = tuple(int(s) for s in command.split(" -s ")[1].split())
    assert sizes == (224, 384, 448, 512)
    # the spec's patch size (Twins: a stride of 32) accepts every size, without building or fetching anything
    specs = check_models(RunConfig(models=("deit_ti", "twins_pcpvt_small"), sizes=sizes, data=None, out=Path("x")))
    assert [s.default_weights for s in specs] == ["deit_tiny_patch16_224.fb_in1k", "twins_pcpvt_small.in1k"]


# --- 3. click's usage errors are one line naming the option --------------------------------------------------------

NO_VALUE = [
    (["resolution", "-m", "-s", "56"], "-m has no value: name a model, e.g. -m deit_ti"),
    (["resolution", "-m", "deit_ti", "--sizes"], "--sizes has no value: name sizes in px, e.g. --sizes 224 384"),
    (["shift", "-s", "224", "-m"], "-m has no value"),
    (["throughput", "-m", "deit_ti", "-s"], "-s has no value"),
    (["demo", "--sizes", "--per-class", "1"], "--sizes has no value"),
    (["report", "runs/x", "--format"], "--format has no value"),
    (["compare", "a", "b", "--max-drop"], "--max-drop has no value"),
    (["check-data", "val", "--layout"], "--layout has no value"),
]
UNKNOWN = [
    (["resolution", "--sise", "56"], "cpvt-eval resolution has no option --sise; did you mean --sizes?"),
    (["shift", "--epoch", "2"], "cpvt-eval shift has no option --epoch; did you mean --epochs?"),
    (["throughput", "--repeat", "3"], "cpvt-eval throughput has no option --repeat; did you mean --repeats?"),
    (["report", "r", "--pair"], "cpvt-eval report has no option --pair; did you mean --pairs?"),
    (["compare", "a", "b", "--max-drp", "1"], "cpvt-eval compare has no option --max-drp; did you mean --max-drop?"),
    (["demo", "--per-clas", "2"], "cpvt-eval demo has no option --per-clas; did you mean --per-class?"),
    (["check-data", "val", "--no-label"], "cpvt-eval check-data has no option --no-label; did you mean --no-labels?"),
    (["models", "--jsn"], "cpvt-eval models has no option --jsn; did you mean --json?"),
]
EXTRA = [
    (["resolution", "-m", "deit_ti", "--data", "val", "stray"], "cpvt-eval resolution takes no argument stray here"),
    (["shift", "--data", "val", "stray"], "cpvt-eval shift takes no argument stray here"),
    (["throughput", "--budget", "1", "stray"], "cpvt-eval throughput takes no argument stray here"),
    (["report", "r", "stray"], "cpvt-eval report takes no argument stray here"),
    (["compare", "a", "b", "stray"], "cpvt-eval compare takes no argument stray here"),
    (["demo", "--seed", "1", "stray"], "cpvt-eval demo takes no argument stray here"),
    (["check-data", "val", "stray"], "cpvt-eval check-data takes no argument stray here"),
]


USAGE = NO_VALUE + UNKNOWN + EXTRA


@pytest.mark.parametrize("args, expected", USAGE, ids=[" ".join(args) for args, _ in USAGE])
def test_a_usage_error_is_one_line_naming_the_option(args, expected):
    result = invoke(*args)
    assert result.exit_code == 2
    assert expected in error_line(result)


@pytest.mark.parametrize("args", [["-m", "-h"], ["-m", "deit_ti", "-s", "--help"], ["-h", "-c"]])
def test_help_after_a_flag_without_its_value_shows_the_help(args):
    """``-m -h``: the help is asked for; ``-h`` is not taken as the model's name."""
    result = invoke("resolution", *args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout and "--sizes" in result.stdout


def test_usage_errors_of_the_app_itself_are_one_line_too(capsys):
    for args, expected in (
        (["--bogus"], "cpvt-eval has no option --bogus"),
        (["resolutoin"], "no such command 'resolutoin'"),
        (["check-data"], "cpvt-eval check-data needs DATA"),
        (["demo", "--per-class", "x"], "cpvt-eval demo: invalid value for '--per-class'"),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


# --- 4. cheap checks come before any weights are fetched -----------------------------------------------------------


@pytest.mark.parametrize("model", ["deit_ti", "vit_small_patch16_224"])  # registered; timm's, read off the module
def test_a_bad_size_is_reported_before_any_weights_are_fetched(model, tmp_path, monkeypatch):
    import cpvt_eval.jobs.assemble as assemble

    def fetch(*a, **k):
        raise AssertionError("weights fetched before the sizes were checked")

    monkeypatch.setattr(assemble, "load_checkpoint", fetch)
    data = make_imagefolder(tmp_path / "val", (0, 1), per_class=1)
    result = invoke("resolution", "-m", model, "-s", "225", "--data", data, "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 2
    assert "size 225 is not a positive multiple of" in error_line(result) and "224 or 240" in error_line(result)
    assert not (tmp_path / "r").exists()


def test_a_bad_size_comes_before_the_dataset_is_read(tmp_path):
    result = invoke("resolution", "-m", "deit_ti", "-s", "225", "--data", tmp_path / "nowhere", *FAST)
    assert result.exit_code == 2 and "size 225" in error_line(result)


# --- 5. paths and empty values say what they are and what to type ---------------------------------------------------


def test_a_folder_given_as_a_checkpoint_says_what_it_is(world, tmp_path):
    plain = tmp_path / "ckpts"
    plain.mkdir()
    (plain / "best.pth").write_bytes(b"")
    hf = tmp_path / "my-vit"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    base = ["resolution", "-m", "deit_toy", "-s", "56", "--data", world, *FAST]
    said = error_line(invoke(*base, "-c", plain))
    assert f"checkpoint {plain} is a directory, not a file; it holds best.pth: give a .pth" in said
    said = error_line(invoke(*base, "-c", hf))
    assert f"checkpoint {hf} is a transformers save_pretrained folder (config.json): give it as the model" in said
    assert f"--model {hf}, without --checkpoint" in said


def test_a_missing_classes_file_names_the_option(tmp_path):
    data = make_imagefolder(tmp_path / "val", (0, 1), per_class=1)
    for command in (["check-data", data], ["resolution", "-m", "deit_ti", "-s", "224", "--data", data, *FAST]):
        result = invoke(*command, "--classes", tmp_path / "nofile.txt")
        assert result.exit_code == 2
        said = error_line(result)
        assert f"--classes {tmp_path / 'nofile.txt'} does not exist: give a file of WordNet ids" in said
        assert "imagenet-a / imagenet-r" in said


@pytest.mark.parametrize("nested", [False, True])
def test_check_data_on_unlabelled_photos_names_no_labels(nested, tmp_path):
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    for i in range(3):
        make_image(i).save(photos / ("trip" if nested else "") / f"DSC{i:03d}.jpg")
    result = invoke("check-data", photos)
    assert result.exit_code == 2
    assert f"check them with --no-labels (cpvt-eval check-data {photos} --no-labels)" in error_line(result)
    assert invoke("check-data", photos, "--no-labels").exit_code == 0


@pytest.mark.parametrize("form", [["--out", ""], ["--out="], ["-o", ""]])
def test_an_empty_out_is_refused(form, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("resolution", "-m", "deit_toy", "-s", "56", "--data", world, *FAST, *form)
    assert result.exit_code == 2
    assert "is empty: name a run directory, e.g." in error_line(result)
    assert list(tmp_path.iterdir()) == []  # the current directory was not made a run directory
    assert "--out is empty" in error_line(invoke("report", "runs/x", "--out", ""))


# --- 6. an interrupt says what it keeps -----------------------------------------------------------------------------


def ctrl_c(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", [["models"], ["models", "deit_ti", "--json"]])
def test_ctrl_c_in_models_does_not_speak_of_a_run_directory(command, monkeypatch):
    import cpvt_eval.cli.models as models

    monkeypatch.setattr(models, "model_rows", ctrl_c)  # inside the command, where its work is
    result = invoke(*command)
    assert result.exit_code == 130 and error_line(result) == "error: interrupted"


def test_ctrl_c_in_a_measuring_command_keeps_its_cells(world, monkeypatch, tmp_path):
    import cpvt_eval.jobs.run as job

    monkeypatch.setattr(job, "run_probes", ctrl_c)
    result = invoke("resolution", "-m", "deit_toy", "-s", "56", "--data", world, "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 130
    assert error_line(result) == "error: interrupted; finished cells are kept in the run directory"


# --- 7. the models table says at which size it counts GFLOPs ---------------------------------------------------------


def test_models_json_says_the_size_its_gflops_are_counted_at():
    rows = json.loads(invoke("models", "deit_ti", "eva02_ti", "flexivit_s", "cvt_13_384", "deit_toy", "--json").stdout)
    assert [(r["name"], r["gflops_img_size"]) for r in rows] == [
        ("deit_tiny_patch16_224", 224),
        ("eva02_tiny_patch14_336", 336),
        ("flexivit_small", 240),
        ("cvt_13_384", 384),
        ("deit_toy", 56),
    ]
    row = next(line for line in README.read_text().splitlines() if line.startswith("| `cpvt-eval models"))
    assert "GFLOPs at 224" not in row and "GFLOPs at each model's native size" in row and "gflops_img_size" in row


# --- 8. results on stdout, messages on stderr ------------------------------------------------------------------------


def test_check_data_findings_are_on_stdout(tmp_path):
    data = make_imagefolder(tmp_path / "val", (0, 1), per_class=1)
    (data / "n01440764" / "empty.JPEG").write_bytes(b"")
    result = invoke("check-data", data, "-j", "0")
    assert result.exit_code == 1
    assert "n01440764/empty.JPEG: empty file" in result.stdout and "empty.JPEG" not in result.stderr
    assert "2 classes" in result.stdout


def test_measuring_and_report_commands_keep_tables_on_stdout_and_messages_on_stderr(world, tmp_path):
    out = tmp_path / "run"
    result = invoke("resolution", "-m", "deit_toy", "-s", "56", "--data", world, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "deit_toy" in result.stdout and "results:" in result.stderr and "results:" not in result.stdout
    compared = invoke("compare", out, out)
    assert compared.exit_code == 0 and "deit_toy" in compared.stdout and "ok: tolerance" in compared.stderr
    reported = invoke("report", out, "--format", "md")
    assert reported.exit_code == 0 and "wrote" in reported.stderr and reported.stdout == ""
