"""The ``cpvt-eval`` entry point: OpenMP's wait policy set before torch loads (unless the environment chose one), and
the garbage collector kept off the objects that live as long as the process."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

import cpvt_eval.cli
from cpvt_eval.__main__ import entry
from cpvt_eval.runtime import lasting_imports


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_entry_sets_the_wait_policy_unless_given(monkeypatch, preset, expected):
    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    monkeypatch.setattr(cpvt_eval.cli, "main", lambda: 0)
    try:
        with pytest.raises(SystemExit) as stopped:
            entry()
        assert stopped.value.code == 0
        assert os.environ["OMP_WAIT_POLICY"] == expected
        assert gc.get_freeze_count() > 0  # what is left goes with the process
    finally:
        gc.unfreeze()


def test_the_policy_is_set_before_torch_loads():
    """Nothing the entry point imports before it sets the variable loads torch (OpenMP reads it once, at load)."""
    code = (
        "import os, sys\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "import cpvt_eval.__main__\n"
        "assert 'torch' not in sys.modules, 'torch loaded before entry()'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lasting_imports_freezes_a_first_import_only():
    frozen = gc.get_freeze_count()
    with lasting_imports("cpvt_eval.runtime"):  # loaded already: nothing changes
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    try:
        with lasting_imports("a_module_not_loaded"):
            assert not gc.isenabled()
            made = [[] for _ in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(made)
    finally:
        gc.unfreeze()
    assert gc.isenabled()
