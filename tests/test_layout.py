"""The package's shape: light start-up, no import cycle in the CLI, one cell identity, piped tables."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import torch
from typer.testing import CliRunner

from cpvt_eval.cli import app
from cpvt_eval.distributed import Shard, cell_payload, merge_cells
from cpvt_eval.engine import CellOutput
from cpvt_eval.report import records
from cpvt_eval.report.compare import compare_runs
from cpvt_eval.results import KEY_FIELDS, CellId, ResultRow, id_fields
from cpvt_eval.results.schema import DATA, PROTOCOL, WEIGHTS, WHAT


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_imports_neither_torch_timm_nor_pandas():
    mods = _imported_after(
        "from cpvt_eval.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help']); main(['resolution', '--help'])"
    )
    assert "cpvt_eval.cli.resolution" in mods  # the commands were registered
    assert not {"torch", "timm", "pandas"} & mods


def test_import_cpvt_eval_is_light_and_the_api_is_lazy():
    mods = _imported_after("import cpvt_eval; assert cpvt_eval.__version__")
    assert not {"torch", "timm", "pandas"} & mods
    import cpvt_eval

    assert callable(cpvt_eval.evaluate) and cpvt_eval.RunConfig.__name__ == "RunConfig"


def test_import_cpvt_eval_models_registers_every_model_with_timm():
    """The documented way to reach the models from timm: ``import cpvt_eval.models`` (a fresh interpreter, so no
    other test's imports help)."""
    code = (
        "import timm, cpvt_eval\n"
        "assert not timm.is_model('cpvt_ti')  # a bare import registers nothing (it stays light)\n"
        "import cpvt_eval.models\n"
        "from cpvt_eval.models import list_specs\n"
        "names = [s.name for s in list_specs(True)]\n"
        "missing = [n for n in names if not timm.is_model(n)]\n"
        "assert 'cpvt_ti' in names and 'cvt_13' in names and not missing, missing\n"
        "m = timm.create_model('cpvt_ti')\n"
        "print(sum(p.numel() for p in m.parameters()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "5681512"


def test_the_app_module_imports_no_command_module():
    # cli/app.py sits below the command modules (each imports it); it must import none of them back.
    import ast
    from pathlib import Path

    import cpvt_eval.cli as cli

    here = Path(cli.__file__).parent
    commands = {p.stem for p in here.glob("*.py")} - {"__init__", "app"}
    tree = ast.parse((here / "app.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(a.name for a in node.names if node.level == 1 and not node.module)
    assert not {m.rsplit(".", 1)[-1] for m in imported if m} & commands
    assert "resolution" in commands and "models" in commands


def test_every_identity_field_is_a_row_column_and_has_a_role():
    columns = {f.name for f in dataclasses.fields(ResultRow)}
    assert set(KEY_FIELDS) <= columns
    assert {f.metadata["role"] for f in dataclasses.fields(CellId)} == {WHAT, WEIGHTS, DATA, PROTOCOL}
    # report labels and compare's matching are derived from the identity, not listed by hand
    assert [name for name, _ in records._VARIANT_FIELDS] == [f.name for f in id_fields(WEIGHTS, DATA, PROTOCOL)]


def _row(**over) -> ResultRow:
    from test_results import make_row

    return make_row(**over)


def test_compare_matches_on_every_protocol_field_of_the_identity():
    base = _row()
    # a protocol field the old hand-written match list did not have: cells differing in it are not matched
    drafted = dataclasses.replace(base, decode_draft=True)
    result = compare_runs([base, drafted], [drafted, base])
    assert len(result.cells) == 2 and all(c.baseline.decode_draft == c.current.decode_draft for c in result.cells)
    # a new checkpoint is what CI compares: matched across weights
    newer = dataclasses.replace(base, checkpoint_sha256="f" * 64)
    assert len(compare_runs([base], [newer]).cells) == 1


def test_distributed_payload_carries_every_cell_field():
    cell = CellOutput(
        model="m",
        size=32,
        pe_policy="peg-native",
        grid="2x2",
        resize_size=36,
        correct1=1,
        correct5=2,
        n=2,
        duration_s=1.5,
        indices=torch.tensor([0, 1]),
        labels=torch.tensor([3, 4]),
        topk=torch.tensor([[3], [1]], dtype=torch.int16),
        batch_size=16,
        oom_retries=1,
        nonfinite=2,
    )
    payload = cell_payload(cell, Shard(image_set=None, start=2, stop=4, total=4))
    assert set(payload) == {f.name for f in dataclasses.fields(CellOutput)}
    other = dict(payload, indices=torch.tensor([0, 1]), batch_size=8, oom_retries=0, duration_s=2.0)
    merged = merge_cells([other, payload], 4)
    other_nonfinite = other["nonfinite"]
    assert (merged.batch_size, merged.oom_retries, merged.duration_s, merged.n) == (8, 1, 2.0, 4)
    assert merged.nonfinite == 2 + other_nonfinite
    assert merged.indices.tolist() == [0, 1, 2, 3]


def test_piped_tables_keep_every_number(monkeypatch):
    import cpvt_eval.cli.models as cli_models

    monkeypatch.setattr(cli_models, "model_cost", lambda spec: (5_681_512, 2.507, ""))
    result = CliRunner().invoke(app, ["models", "cpvt_ti", "deit_tiny_patch16_224"])
    assert result.exit_code == 0, result.output
    assert "5.68M" in result.output and "2.51" in result.output and "…" not in result.output
