"""Memory that does not grow with what a run keeps: large per-image records mapped onto scratch files, the native
reference read back memory-mapped, predictions files streamed to disk."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image, toy_run_config
from safetensors.numpy import load_file

from cpvt_eval.jobs.run import run_probes
from cpvt_eval.probes import base, split
from cpvt_eval.results import RunStore
from cpvt_eval.results.arrays import map_arrays, safetensors_chunks
from cpvt_eval.results.store import atomic_write_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
VOLATILE = {"started_at", "duration_s", "aggregate_images_per_sec", "predictions"}


def test_arrays_are_written_as_safetensors_without_a_copy_and_mapped_back(tmp_path):
    arrays = {
        "indices": np.arange(7, dtype=np.int32),
        "probs": np.random.default_rng(0).random((7, 5)).astype(np.float32),
        "agree": np.array([1, 0, 1, 1, 0, 0, 1], dtype=np.uint8),
        "top5": np.arange(35, dtype=np.int16).reshape(7, 5),
        "none": np.zeros((0, 3), dtype=np.float32),
    }
    pieces = safetensors_chunks(arrays)
    # a view of each array's own memory: the file is streamed, never built whole in memory
    assert all(isinstance(p, memoryview) for p in pieces[1:] if len(p))
    assert np.shares_memory(np.frombuffer(pieces[2], dtype=np.uint8), arrays["indices"])
    atomic_write_bytes(tmp_path / "a.safetensors", pieces)
    read, mapped = load_file(str(tmp_path / "a.safetensors")), map_arrays(tmp_path / "a.safetensors")
    for name, a in arrays.items():
        assert read[name].dtype == a.dtype and np.array_equal(read[name], a), name  # safetensors' own reader agrees
        assert np.array_equal(mapped[name], a), name
    assert isinstance(mapped["probs"], np.memmap) and not mapped["probs"].flags.writeable


def test_large_records_go_off_the_heap_and_change_no_figure(tmp_path, toy_checkpoints, monkeypatch):
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(10):
        make_image(900 + i, (70, 60)).save(data / f"img{i}.png")
    from conftest import make_imagefolder

    labelled = make_imagefolder(tmp_path / "val", (0, 1, 2, 999), per_class=3)

    def run(out):
        cfg = toy_run_config(labelled, toy_checkpoints, out, models=("deit_toy",), sizes=(56, 64), timing=False)
        run_probes(cfg, ["resolution", "agreement", "calibration"])
        return {
            (r.probe, r.img_size): {k: v for k, v in r.to_dict().items() if k not in VOLATILE}
            for r in RunStore(out).rows()
        }

    on_heap = run(tmp_path / "heap")
    mapped, references = [], []
    real_file = base.tempfile.TemporaryFile

    def scratch_file(*args, **kwargs):
        mapped.append(kwargs["dir"])
        return real_file(*args, **kwargs)

    from cpvt_eval.probes import agreement as agreement_module

    monkeypatch.setattr(base, "OFF_HEAP_BYTES", 0)  # every record made by per_image counts as large
    monkeypatch.setattr(base.tempfile, "TemporaryFile", scratch_file)
    real_counter = agreement_module.AgreementCounter.__init__

    def counter(self, k, n, settings, num_classes, reference, native_size):
        references.append(reference)
        real_counter(self, k, n, settings, num_classes, reference, native_size)

    monkeypatch.setattr(agreement_module.AgreementCounter, "__init__", counter)
    off_heap = run(tmp_path / "mapped")
    assert off_heap == on_heap  # the same figures, the same per-image arrays (compared through the rows' counts)
    # agreement's native softmax and calibration's logits at both sizes were mapped onto scratch files
    assert mapped == [tmp_path / "mapped" / ".scratch"] * 3
    assert not any((tmp_path / "mapped" / ".scratch").iterdir())  # unlinked files: nothing left behind
    # the other sizes read the native softmax memory-mapped from the stored cell
    (reference,) = [r for r in references if r is not None]
    assert isinstance(reference["probs"], np.memmap)
    store = RunStore(tmp_path / "mapped")
    native = next(r for r in split(store.rows())["agreement"] if r.img_size == 56)
    assert np.array_equal(np.asarray(reference["probs"]), store.load_predictions(native, ("probs",))["probs"])
