"""``--sizes`` ranges (START:STOP:STEP) and many models in one command (globs, ``--models-file``): what they expand
to, and the one-line usage error (exit 2) of each bad value, through the real CLI."""

from __future__ import annotations

import json

import pytest
from conftest import make_imagefolder
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.cli.parsing import expand_models, parse_models, parse_sizes
from cpvt_eval.errors import CpvtEvalError

FAST = ["--no-throughput", "--workers", "0", "--batch-size", "6", "--model-arg", "num_classes=1000", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result) -> str:
    """The one error line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return make_imagefolder(tmp_path / "val", class_indices=(0, 1, 2), per_class=2)


@pytest.fixture
def ckpt_args(toy_checkpoints):
    return [a for name, (_, path) in toy_checkpoints.items() for a in ("-c", f"{name}={path}")]


# -- sizes -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values,sizes",
    [
        (["224:512:32"], (224, 256, 288, 320, 352, 384, 416, 448, 480, 512)),
        (["224", "384:512:64"], (224, 384, 448, 512)),
        (["224,256:320:32"], (224, 256, 288, 320)),
        (["256:320:32", "224", "288", "256"], (256, 288, 320, 224)),  # duplicates dropped, the order as typed
        (["224:224:16"], (224,)),
        ([" 56 : 64 : 8 "], (56, 64)),
    ],
)
def test_size_ranges_expand_stop_included(values, sizes):
    assert parse_sizes(values) == sizes


@pytest.mark.parametrize(
    "value,message",
    [
        ("512:224", "size range '512:224': the stop 224 is below the start 512"),
        ("224:512:0", "size range '224:512:0': the step must be positive, got 0"),
        ("224:512:-32", "size range '224:512:-32': the step must be positive, got -32"),
        ("224:5x2:32", "size '5x2' in the range '224:5x2:32' is not a whole number of pixels"),
        ("224:512:3.5", "size range '224:512:3.5': the step '3.5' is not a whole number of pixels"),
        ("224:512:32:1", "size range '224:512:32:1' has 4 parts; write START:STOP:STEP"),
        ("224:512", "size range '224:512' has no step; write START:STOP:STEP"),
        ("224:513:32", "size range '224:513:32' ends at 512, not at its stop 513; write 224:512:32"),
        ("224:1024:1", "size range '224:1024:1' gives 801 sizes, more than 64"),
        ("0:64:8", "size 0 in the range '0:64:8' must be positive"),
    ],
)
def test_bad_size_range_is_one_line_and_exit_2(data, tmp_path, value, message):
    out = tmp_path / "out"
    result = invoke("resolution", "-m", "cpvt_toy", "-s", "56", value, "--data", data, "--out", out, *FAST)
    assert result.exit_code == 2
    line = one_line(result)
    assert message in line and value in line
    assert not out.exists()


def test_range_off_the_patch_grid_names_the_first_bad_size_and_its_neighbours(data, toy_checkpoints, tmp_path):
    # cpvt_toy has patch 4: 56:66:5 is 56, 61, 66, and 61 is the first that is not a multiple of 4
    ckpt = toy_checkpoints["cpvt_toy"][1]
    out = tmp_path / "out"
    result = invoke("resolution", "-m", "cpvt_toy", "-s", "56:66:5", "--data", data, "-c", ckpt, "--out", out, *FAST)
    assert result.exit_code == 2
    line = one_line(result)
    assert "size 61 is not a positive multiple of cpvt_toy's patch size 4; nearest valid sizes: 60 or 64" in line
    assert not out.exists()


def test_help_does_not_import_torch():
    import subprocess
    import sys

    # the sizes are parsed, and the globs expanded, only once a command runs: --help stays instant
    code = (
        "import sys\nfrom cpvt_eval.cli import app\ntry:\n    app(['resolution', '--help'])\nexcept SystemExit:\n"
        "    pass\nassert 'torch' not in sys.modules and 'timm' not in sys.modules, 'imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--models-file" in done.stdout, done.stderr


# -- models: globs and --models-file ---------------------------------------------------------------------------------


def test_globs_match_registered_toy_models_in_order_and_once():
    assert expand_models(("cpvt_toy*",)) == ("cpvt_toy", "cpvt_toy_gap")
    assert expand_models(("deit_toy*",)) == ("deit_toy", "deit_toy_nope", "deit_toy_sincos")
    # order of the patterns kept; a model listed outright, or by an earlier glob, comes once
    assert expand_models(("deit_toy", "*_toy", "cpvt_toy*")) == ("deit_toy", "cpvt_toy", "cvt_toy", "cpvt_toy_gap")
    assert expand_models(("deit_toy_[ns]*",)) == ("deit_toy_nope", "deit_toy_sincos")
    assert expand_models(("cpvt_toy", "deit_toy")) == ("cpvt_toy", "deit_toy")  # no glob: as typed


def test_glob_matches_aliases_as_full_names_then_timm_names():
    # the alias deit3_s gives its registered model, deit3_small_patch16_224; timm's other match comes after
    assert expand_models(("deit3_s*",)) == ("deit3_small_patch16_224", "deit3_small_patch16_384")
    models = expand_models(("*deit*small*",))
    assert models[-1] == "deit3_small_patch16_384" and models[:-1] == tuple(sorted(models[:-1]))
    assert len(models) == len(set(models))
    assert expand_models(("deit_ti", "deit_ti*"))[0] == "deit_ti"
    assert "deit_tiny_patch16_224" not in expand_models(("deit_ti", "deit_ti*"))  # the alias stands for it


def test_glob_with_a_dot_matches_timm_pretrained_tags():
    assert "deit_tiny_patch16_224.fb_in1k" in expand_models(("deit_tiny_*.fb_in1k",))


def test_glob_that_matches_nothing_is_one_line_and_exit_2(data, tmp_path):
    result = invoke("resolution", "-m", "cpvt_toy", "-m", "nothing_like_this_*", "--data", data, *FAST)
    assert result.exit_code == 2
    assert "'nothing_like_this_*' matches no registered model, alias or timm model" in one_line(result)


def test_models_file_with_comments(tmp_path):
    path = tmp_path / "models.txt"
    path.write_text("# toy models\n\ncpvt_toy   # the PEG one\n  deit_toy*  \n#deit_ti\n")
    assert parse_models(["cvt_toy"], path) == ("cvt_toy", "cpvt_toy", "deit_toy*")
    assert expand_models(parse_models([], path)) == ("cpvt_toy", "deit_toy", "deit_toy_nope", "deit_toy_sincos")


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "cannot read it (No such file or directory)"),
        (b"# only a comment\n\n   \n", "lists no model"),
        (b"cpvt_toy\n\xe9t\xe9\n", "not UTF-8 text"),
    ],
)
def test_bad_models_file_is_one_line_and_exit_2(data, tmp_path, content, message):
    path = tmp_path / "models.txt"
    if content is not None:
        path.write_bytes(content)
    result = invoke("resolution", "--models-file", path, "--data", data, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 2
    line = one_line(result)
    assert f"--models-file {path}" in line and message in line
    with pytest.raises(CpvtEvalError, match="--models-file"):
        parse_models([], path)


def test_models_file_that_is_a_folder(tmp_path):
    with pytest.raises(CpvtEvalError, match="cannot read it"):
        parse_models([], tmp_path)


def test_throughput_takes_a_glob_and_a_models_file(tmp_path):
    path = tmp_path / "models.txt"
    path.write_text("cpvt_toy\n")
    args = ["throughput", "-m", "deit_toy_[ns]*", "--models-file", path, "-s", "56:64:8", "--device", "cpu"]
    result = invoke(*args, "--repeats", "1", "--warmup", "0", "--batch-size", "2", "--no-flops", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["model"], r["img_size"]) for r in rows] == [
        (m, s) for s in (56, 64) for m in ("deit_toy_nope", "deit_toy_sincos", "cpvt_toy")
    ]


# -- end to end: a glob and a size range, then the rerun resumes ------------------------------------------------------


def test_glob_and_range_run_then_rerun_skips_finished_cells(data, ckpt_args, tmp_path):
    out = tmp_path / "out"
    # the toys with a checkpoint: cpvt_toy and deit_toy (cvt_toy is a letter short)
    args = ["resolution", "-m", "[cd]??t_toy", "-s", "56:64:8", "--data", data, "--out", out, *ckpt_args, *FAST]
    first = invoke(*args, "--json")
    assert first.exit_code == 0, first.output
    cells = {(r["model"], r["img_size"]) for r in json.loads(first.stdout)}
    assert cells == {(m, s) for m in ("cpvt_toy", "deit_toy") for s in (56, 64)}
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "skipping 4 finished cell(s)" in again.stderr
    assert len((out / "rows.jsonl").read_text().splitlines()) == 4


def test_default_run_directory_of_many_models_stays_a_valid_name():
    from cpvt_eval.cli.parsing import default_out

    assert default_out(("cpvt_toy", "deit_toy")).name == "cpvt_toy+deit_toy"
    many = expand_models(("deit*",))
    name = default_out(many).name
    assert len(name.encode()) <= 255 and name.startswith(f"{many[0]}+{len(many) - 1}-more-")
    assert default_out(many) == default_out(many)  # the same command resumes the same directory
