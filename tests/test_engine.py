"""The shared-data sweep: every cell equals evaluating that cell alone, data work is done once per size, OOM halving."""

from __future__ import annotations

import pytest
import torch
from conftest import sweep_cells, top5
from PIL import Image
from torchvision import transforms

import cpvt_eval.data as data_mod
from cpvt_eval.data import EvalDataset, EvalTransform, make_loader, open_dataset
from cpvt_eval.engine import ChunkedForward, EvalSettings
from cpvt_eval.errors import CpvtEvalError
from cpvt_eval.jobs.assemble import build_model
from cpvt_eval.models.posenc import adapt_to_size

SIZES = (56, 64)
BATCH = 5  # 12 images: batches of 5, 5, 2, so a short last batch is covered too


@pytest.fixture
def image_set(imagefolder):
    return open_dataset(imagefolder)


@pytest.fixture
def toy_models(toy_checkpoints):
    def make():
        return [build_model(name, str(path), {"num_classes": 1000}) for name, (_, path) in toy_checkpoints.items()]

    return make


def settings(batch=BATCH, dtype="fp32"):
    return EvalSettings(device=torch.device("cpu"), batch_size=batch, workers=0, dtype=dtype)


def reference_cell(module, image_set, size, batch=BATCH):
    """One cell the way timm's validate.py does it: PIL decode, Resize + CenterCrop + ToTensor + Normalize in the
    dataset (float tensors), one loader pass for this model and size alone."""
    adapt_to_size(module, size)
    tf = transforms.Compose(
        [
            transforms.Resize(int(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    xs, ys = [], []
    for s in image_set.samples:
        with Image.open(image_set.root / s.relpath) as im:
            xs.append(tf(im.convert("RGB")))
        ys.append(s.label)
    preds = []
    with torch.inference_mode():
        for i in range(0, len(xs), batch):
            preds.append(module(torch.stack(xs[i : i + batch])).topk(5, dim=1).indices)
    pred = torch.cat(preds)
    labels = torch.tensor(ys)
    hits = pred.eq(labels.view(-1, 1))
    return pred, int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def evaluate_size(models, image_set, size, settings):
    return sweep_cells(models, image_set, [size], settings)


def test_shared_sweep_equals_each_cell_alone_and_the_reference_path(image_set, toy_models):
    cells = {(c.model, c.size): c for c in sweep_cells(toy_models(), image_set, SIZES, settings())}
    assert len(cells) == 2 * len(SIZES)
    for model in toy_models():
        for size in SIZES:
            shared = cells[(model.name, size)]
            alone = evaluate_size([model], image_set, size, settings())[0]
            assert torch.equal(top5(shared), top5(alone))
            assert shared.counts == alone.counts
            assert (shared.arrays["indices"] == list(range(len(image_set)))).all()
            pred, c1, c5 = reference_cell(model.module, image_set, size)
            assert torch.equal(top5(shared), pred), f"{model.name} @ {size}"
            assert shared.counts == (c1, c5, len(image_set))
            assert shared.arrays["labels"].tolist() == [s.label for s in image_set.samples]


def test_each_image_is_decoded_once_per_size_whatever_the_number_of_models(image_set, toy_models, monkeypatch):
    calls = []
    real = data_mod.load_sample

    def counting(image_set, sample, *args, **kwargs):
        calls.append(sample.relpath)
        return real(image_set, sample, *args, **kwargs)

    monkeypatch.setattr(data_mod, "load_sample", counting)
    models = toy_models()
    cells = sweep_cells(models, image_set, SIZES, settings())
    assert len(cells) == len(models) * len(SIZES)
    assert len(calls) == len(image_set) * len(SIZES)


def test_batches_travel_as_uint8(image_set):
    loader = make_loader(EvalDataset(image_set, EvalTransform(56)), BATCH, 0)
    images, labels, idx = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (BATCH, 3, 56, 56)


def test_todo_skips_finished_cells(image_set, toy_models):
    models = toy_models()
    done = {(models[0].name, 56)}
    cells = sweep_cells(models, image_set, SIZES, settings(), todo=lambda m, s: (m.name, s) not in done)
    assert {(c.model, c.size) for c in cells} == {(m.name, s) for m in models for s in SIZES} - done


def test_autocast_dtype_reaches_the_model(image_set, toy_models):
    model = toy_models()[0]
    seen = []
    model.module.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    cell = evaluate_size([model], image_set, 56, settings(dtype="bf16"))[0]
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert cell.counts[2] == len(image_set)


class OOMAbove:
    """A fake allocator error: the wrapped forward raises ``torch.OutOfMemoryError`` above ``limit`` images."""

    def __init__(self, forward, limit):
        self.forward, self.limit, self.sizes = forward, limit, []

    def __call__(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {x.shape[0]} images (fake)")
        return self.forward(x)


def test_oom_halves_that_models_batch_and_keeps_its_predictions(image_set, toy_models):
    plain = {c.model: c for c in evaluate_size(toy_models(), image_set, 56, settings(batch=8))}
    models = toy_models()
    fake = OOMAbove(models[0].module.forward, limit=3)
    models[0].module.forward = fake
    cells = {c.model: c for c in evaluate_size(models, image_set, 56, settings(batch=8))}
    hit, other = cells[models[0].name], cells[models[1].name]
    assert (hit.info.batch_size, hit.info.oom_retries) == (2, 2)  # 8 -> 4 -> 2
    assert (other.info.batch_size, other.info.oom_retries) == (8, 0)  # the other model keeps the shared batch
    assert max(s for s in fake.sizes[3:]) <= 2  # after the halving every later batch runs in chunks of 2
    for key in cells:
        assert cells[key].counts == plain[key].counts
        assert cells[key].counts[2] == len(image_set)
        assert torch.equal(top5(cells[key])[:, 0], top5(plain[key])[:, 0])


def test_oom_at_batch_one_is_a_one_line_error(image_set, toy_models):
    model = toy_models()[0]
    model.module.forward = OOMAbove(model.module.forward, limit=0)
    with pytest.raises(CpvtEvalError, match="does not fit"):
        evaluate_size([model], image_set, 56, settings(batch=4))


def test_chunked_forward_splits_and_concatenates_in_order():
    module = torch.nn.Linear(4, 10)
    x = torch.randn(7, 4)
    runner = ChunkedForward(module, 3, torch.device("cpu"), "fp32")
    with torch.inference_mode():
        assert torch.equal(runner(x).top(5), module(x).topk(5, dim=1).indices)
        assert torch.allclose(runner(x).logits, module(x), atol=1e-6)  # chunks of 3: the same up to rounding


def test_counts_are_pinned_by_labels_at_known_ranks(image_set, toy_models):
    """Each image's label is placed at a known rank of the model's own ranking (1, 2, ..., 5, or outside the top
    5), so correct1 and correct5 are known exactly: 2 and 10 of 12, not a comparison of zeros."""
    import dataclasses

    model = toy_models()[0]
    size = SIZES[0]
    first = evaluate_size([model], image_set, size, settings())[0]
    assert first.arrays["top5"].shape == (len(image_set), 5)
    ranked = {int(i): top5(first)[j].tolist() for j, i in enumerate(first.arrays["indices"])}
    samples = []
    for i, s in enumerate(image_set.samples):
        rank = i % 6  # 0..4: that rank of the top 5; 5: a class outside it
        top = ranked[i]
        label = top[rank] if rank < 5 else next(c for c in range(1000) if c not in top)
        samples.append(dataclasses.replace(s, label=label))
    pinned = dataclasses.replace(image_set, samples=samples)
    cell = evaluate_size([model], pinned, size, settings())[0]
    assert cell.counts == (2, 10, 12)
