"""Shared fixtures: generated ImageFolders under real WordNet ids, tiny checkpoints. All offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never touch the network

import numpy as np
import pytest
import torch
from PIL import Image

import cpvt_eval.models  # noqa: F401  (registers the models with timm)
from cpvt_eval.data import imagenet_synsets


def make_image(seed: int, size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=(3,), dtype=np.uint8)
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = base
    # a gradient and a block, so resize/crop have structure to act on
    arr[..., 0] = (np.linspace(0, 255, w)[None, :] * rng.random()).astype(np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 255, size=(3,), dtype=np.uint8)
    return Image.fromarray(arr)


def make_imagefolder(root, class_indices=(0, 1, 2, 999), per_class=3, size=(80, 60), seed=0):
    """An ImageFolder of small JPEGs under the WordNet ids of the given canonical indices."""
    synsets = imagenet_synsets()
    for ci in class_indices:
        folder = root / synsets[ci]
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            make_image(seed * 100_000 + ci * 100 + j, size).save(folder / f"img_{ci}_{j}.JPEG", quality=90)
    return root


@pytest.fixture
def imagefolder(tmp_path):
    return make_imagefolder(tmp_path / "val")


@pytest.fixture
def toy_checkpoints(tmp_path):
    """Random-weight toy checkpoints (1000 classes so that ImageNet labels fit) saved as .pth and .safetensors."""
    from safetensors.torch import save_file

    out = {}
    for i, name in enumerate(("cpvt_toy", "deit_toy")):
        torch.manual_seed(i)
        model = cpvt_eval.create_model(name, num_classes=1000).eval()
        path = tmp_path / f"{name}.pth"
        torch.save({"model": model.state_dict()}, path)
        save_file(model.state_dict(), str(tmp_path / f"{name}.safetensors"))
        out[name] = (model, path)
    return out


def toy_run_config(data, toy_checkpoints, out, models=("cpvt_toy", "deit_toy"), sizes=(56,), batch_size=5, **kw):
    """A ``RunConfig`` of the toy models with their ``toy_checkpoints`` (1000 classes), one process, no workers."""
    from cpvt_eval.config import RunConfig

    return RunConfig(
        models=tuple(models),
        sizes=tuple(sizes),
        data=data,
        out=out,
        checkpoints={m: str(toy_checkpoints[m][1]) for m in models},
        model_args={m: {"num_classes": 1000} for m in models},
        workers=0,
        batch_size=batch_size,
        **kw,
    )


def cell_predictions(run_dir, model: str, size: int) -> dict:
    """The stored per-image ``indices``, ``labels`` and ``top5`` of one cell of a run directory, as tensors."""
    from cpvt_eval.results import RunStore

    store = RunStore(run_dir)
    (row,) = [r for r in store.rows() if r.model == model and r.img_size == size]
    return {k: torch.from_numpy(v.astype("int64")) for k, v in store.load_predictions(row).items()}


@pytest.fixture(autouse=True)
def _user_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Downloads and cached model costs go to a per-session temp dir, never the user's real cache."""
    monkeypatch.setenv("CPVT_EVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cpvt-eval-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one intra-op thread for a module: the toy models do microseconds of work per op, and extra
    threads only add contention on a small shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sweep_cells(models, image_set, sizes, settings, probe=None, todo=None, reference=None):
    """Every (model, size) cell of ``probe`` (accuracy by default), size by size, straight from the engine's pass:
    finished ``probes.base.Cell``s; ``todo(model, size)`` can leave cells out."""
    from cpvt_eval.engine import Work, run_pass
    from cpvt_eval.probes import make

    probe = probe or make("resolution")
    cells = []
    for size in sizes:
        active = [m for m in models if todo is None or todo(m, size)]
        if not active:
            continue
        work = [Work(probe, m, probe.accumulator(m, size, image_set, settings, reference)) for m in active]
        infos = run_pass(work, image_set, size, settings)
        cells += [w.accumulator.finish(info) for w, info in zip(work, infos, strict=True)]
    return cells


def top5(cell) -> torch.Tensor:
    """A finished cell's stored top-k classes (``top5``), as int64."""
    return torch.from_numpy(cell.arrays["top5"].astype("int64"))


def fake_hub_cache(cache, repo: str, files: dict[str, bytes]) -> None:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
