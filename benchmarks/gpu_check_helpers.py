"""The Python steps of ``gpu_check.sh``: inputs for an offline machine, checks of what a run did, the table.

Subcommands (each exits 1 with one line on stderr when its check fails):

    checkpoints DIR NAME...       random-weight checkpoints DIR/NAME.pth (the GPU machine has no network)
    data DIR N                    N generated ImageNet-like 500x375 JPEGs in an ImageFolder
    pinned DEVICE DATA_DIR        the engine's loader hands out pinned batches that copy without blocking
    oom JSON                      a throughput row whose batch was halved after out-of-memory errors
    run RUN_DIR WORLD BACKEND     a resolution run's rows and provenance: world size, backend (or "local"), and
                                  the interleaved throughput columns
    table OUT JSON...             throughput rows (``cpvt-eval throughput --json``) as Markdown, with the paper's
                                  V100 figures where it has them
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fail(message: str) -> None:
    print(f"check failed: {message}", file=sys.stderr)
    raise SystemExit(1)


def checkpoints(out: str, *names: str) -> None:
    import torch

    import cpvt_eval
    from cpvt_eval.models.registry import resolve

    Path(out).mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = cpvt_eval.create_model(resolve(name).name, num_classes=1000)
        torch.save({"model": model.state_dict()}, Path(out) / f"{name}.pth")


def data(out: str, n: str) -> None:
    from _common import make_jpeg_imagefolder

    make_jpeg_imagefolder(Path(out), int(n))


def pinned(device: str, data_dir: str) -> None:
    import torch

    from cpvt_eval.data import EvalDataset, EvalTransform, make_loader, open_dataset

    if not torch.cuda.is_available():
        print("skipped: no CUDA device (pinned memory needs one)")
        return
    image_set = open_dataset(data_dir)
    loader = make_loader(EvalDataset(image_set, EvalTransform(224, 0.875, "bicubic")), 8, 2, pin_memory=True)
    images, _, _ = next(iter(loader))
    if not images.is_pinned():
        fail("the loader's batch is not in pinned memory")
    on_device = images.to(device, non_blocking=True)
    torch.cuda.synchronize()
    if not torch.equal(on_device.cpu(), images):
        fail("the non-blocking copy differs from the batch")
    print(f"ok: pinned batch {tuple(images.shape)} {images.dtype}, non-blocking copy to {device} verified")


def oom(path: str) -> None:
    rows = json.loads(Path(path).read_text())
    for r in rows:
        if r["oom_retries"] < 1:
            fail(f"{r['model']} at {r['img_size']}px: no out-of-memory halving (batch {r['batch_size']})")
        print(
            f"ok: {r['model']} at {r['img_size']}px timed at batch {r['batch_size']} after {r['oom_retries']} halvings"
        )


def run(run_dir: str, world: str, backend: str) -> None:
    from cpvt_eval.results import RunStore

    store = RunStore(run_dir)
    rows = store.rows()
    if not rows:
        fail(f"{run_dir}: no rows")
    for r in rows:
        if r.world_size != int(world):
            fail(f"{r.model}@{r.img_size}: world size {r.world_size}, expected {world}")
        if not r.images_per_sec or r.extra.get("throughput_interleaved") is None:
            fail(f"{r.model}@{r.img_size}: no interleaved throughput figure")
    record = store.provenance()[-1]
    got = record.get("distributed", {}).get("backend", "local")
    if got != backend:
        fail(f"{run_dir}: backend {got}, expected {backend}")
    print(f"ok: {len(rows)} rows, world size {world}, backend {got}")


def table(out: str, *paths: str) -> None:
    from cpvt_eval.published import published_throughput

    paper = {(r["model"], r["img_size"]): r for r in published_throughput()}
    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    lines = [
        "| model | size | dtype | batch | images/s | IQR | rounds | vs DeiT (same rounds) | % of peak | paper V100 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo = 1000 * r["batch_size"] / r["ms_per_batch_q3"]
        hi = 1000 * r["batch_size"] / r["ms_per_batch_q1"]
        pub = paper.get((r["model"], r["img_size"]))
        vs = "" if r["ratio_reference"] == r["model"] else f"{r['ratio']:.3f} [{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}]"
        peak = "" if r.get("peak_fraction") is None else f"{100 * r['peak_fraction']:.0f}%"
        lines.append(
            f"| {r['model']} | {r['img_size']} | {r['dtype']} | {r['batch_size']} | {r['images_per_sec']:,.1f} | "
            f"{lo:,.0f}-{hi:,.0f} | {r['repeats']} | {vs} | {peak} | {'' if pub is None else pub['images_per_sec']} |"
        )
    device = rows[0]["device_name"] if rows else "?"
    text = f"Device: {device}\n\n" + "\n".join(lines) + "\n"
    Path(out).write_text(text)
    print(text)


COMMANDS = {"checkpoints": checkpoints, "data": data, "pinned": pinned, "oom": oom, "run": run, "table": table}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
