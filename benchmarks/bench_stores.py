"""Does reading ImageNet from shards or parquet cost the data pipeline anything next to a folder? And timm's loader?

The data pipeline alone (decode + resize + centre crop to uint8 through ``EvalDataset`` / ``make_loader``, every
size of the sweep 224 384 448 512, one pass per size, no model) from the same JPEG bytes stored as an ImageFolder,
as WebDataset shards (tar, read in place by offset) and as Hugging Face-style parquet (image struct + label), and
timm's own loader on the same shards (``timm.data.create_dataset("wds/...")`` + ``create_loader``, timm's eval
transform, one dataset + loader per size, as a timm user evaluates several sizes). The sources run in interleaved
rounds (A B C D A B C D ...); the table gives each source's median images/s and its median per-round ratio to the
folder with the range.

Before that, the tar readers themselves (one process): building the index (``open_dataset``: a streaming scan of
the tar headers) and reading every image's bytes through it (``os.pread``), against webdataset's and tarfile's own
streaming readers, which read every byte of every member in order.

Example::

    python benchmarks/bench_stores.py --images 200 --rounds 2 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import dataset_stats, make_jpeg_imagefolder, median, spread  # noqa: E402

from cpvt_eval.data import EvalDataset, EvalTransform, imagenet_synsets, make_loader, open_dataset  # noqa: E402
from cpvt_eval.data.store_reads import close_handles, read_store_bytes  # noqa: E402

SIZES = (224, 384, 448, 512)


def build_stores(folder, out: Path, n_shards: int, n_files: int, row_group: int) -> dict:
    """The folder's JPEG bytes as shards (``KEY.jpg``, ``KEY.cls``, ``KEY.json``) and as parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = [(s.name, s.label, (folder.root / s.relpath).read_bytes()) for s in folder.samples]
    shutil.rmtree(out, ignore_errors=True)
    (out / "wds").mkdir(parents=True)
    (out / "parquet").mkdir()
    per = -(-len(items) // n_shards)
    for i in range(n_shards):
        with tarfile.open(out / "wds" / f"val-{i:02d}.tar", "w") as tf:
            for name, label, data in items[i * per : (i + 1) * per]:
                key = name.rsplit(".", 1)[0]
                for ext, payload in (
                    ("jpg", data),
                    ("cls", str(label).encode()),
                    ("json", json.dumps({"filename": name, "label": label}).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    features = {"image": {"_type": "Image"}, "label": {"names": list(imagenet_synsets()), "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    per = -(-len(items) // n_files)
    for i in range(n_files):
        part = items[i * per : (i + 1) * per]
        table = pa.table(
            {"image": [{"bytes": d, "path": n} for n, _, d in part], "label": pa.array([c for _, c, _ in part])}
        ).replace_schema_metadata(metadata)
        name = f"validation-{i:05d}-of-{n_files:05d}.parquet"
        pq.write_table(table, out / "parquet" / name, row_group_size=row_group)
    return {
        "folder": str(folder.root),
        "wds": str(out / "wds" / f"val-{{00..{n_shards - 1:02d}}}.tar"),
        "parquet": str(out / "parquet"),
    }


def time_readers(specs: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds to index the shards and to read every image's bytes, per reader."""
    import webdataset as wds

    shards = sorted(Path(specs["wds"]).parent.glob("val-*.tar"))
    out: dict[str, list[float]] = {k: [] for k in ("index", "pread", "wds", "tarfile", "pq_index")}
    for _ in range(rounds):
        close_handles()
        t0 = time.perf_counter()
        image_set = open_dataset(specs["wds"])
        out["index"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = sum(len(read_store_bytes(image_set, s)) > 0 for s in image_set.samples)
        out["pread"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = sum(1 for _ in wds.WebDataset([str(p) for p in shards], shardshuffle=False))
        out["wds"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        k = 0
        for p in shards:
            with tarfile.open(p, "r|") as tf:
                for member in tf:
                    if member.name.endswith(".jpg"):
                        k += len(tf.extractfile(member).read()) > 0
        out["tarfile"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        open_dataset(specs["parquet"])
        out["pq_index"].append(time.perf_counter() - t0)
        assert n == m == k == len(image_set), (n, m, k)
    return out


def ours_pass(image_set, batch: int, workers: int) -> int:
    n = 0
    for size in SIZES:
        for images, _labels, _index in make_loader(EvalDataset(image_set, EvalTransform(size)), batch, workers):
            n += images.shape[0]
    return n


def timm_pass(shard_dir: Path, split: str, n_images: int, batch: int, workers: int) -> int:
    from timm.data import create_dataset, create_loader

    n = 0
    for size in SIZES:
        ds = create_dataset("wds/bench", root=str(shard_dir), split=f"{split}|{n_images}", is_training=False)
        loader = create_loader(
            ds,
            input_size=(3, size, size),
            batch_size=batch,
            is_training=False,
            interpolation="bicubic",
            crop_pct=0.875,
            num_workers=workers,
            use_prefetcher=False,
            persistent_workers=False,
            device=torch.device("cpu"),
        )
        for images, _target in loader:
            n += images.shape[0]
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--parquet-files", type=int, default=2)
    p.add_argument("--row-group", type=int, default=100, help="rows per parquet row group (datasets writes 100)")
    p.add_argument("--no-timm", action="store_true", help="leave timm's loader out of the rounds")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cpvt_eval_bench_jpegs")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("timm").setLevel(logging.ERROR)  # its 'no _info.json, using the split' warning

    root = make_jpeg_imagefolder(args.data, args.images)
    folder = open_dataset(root, limit=args.images)
    stats = dataset_stats(root)
    work = Path(tempfile.mkdtemp(prefix="cpvt_eval_bench_stores_"))
    try:
        specs = build_stores(folder, work, args.shards, args.parquet_files, args.row_group)
        sets = {"folder": folder, "wds": open_dataset(specs["wds"]), "parquet": open_dataset(specs["parquet"])}
        assert len({len(s) for s in sets.values()}) == 1
        assert sets["wds"].fingerprint == sets["parquet"].fingerprint

        readers = time_readers(specs, 3)
        print(
            f"\n{len(folder)} JPEGs {stats['dims'][0]}x{stats['dims'][1]} (mean {stats['mean_kb']:.0f} KB); "
            f"{args.shards} shards, {args.parquet_files} parquet files of {args.row_group}-row groups\n"
        )
        print("| tar reader (one process, median of 3) | ms | per image, us |")
        print("|---|---|---|")
        n = len(folder)
        rows = (
            ("index: header scan (`open_dataset`, tarfile)", "index"),
            ("read every image by offset (`os.pread`)", "pread"),
            ("webdataset `WebDataset` stream (every member)", "wds"),
            ("tarfile stream `r|` (every member)", "tarfile"),
            ("parquet index (`open_dataset`: labels, paths, byte lengths)", "pq_index"),
        )
        for label, key in rows:
            ms = 1000 * median(readers[key])
            print(f"| {label} | {ms:.1f} | {1000 * ms / n:.0f} |")

        sources = ["folder", "wds", "parquet"] + ([] if args.no_timm else ["timm-wds"])
        seconds: dict[str, list[float]] = {k: [] for k in sources}
        shard_split = Path(specs["wds"]).name
        for r in range(args.rounds):
            for src in sources:
                close_handles()
                t0 = time.perf_counter()
                if src == "timm-wds":
                    got = timm_pass(Path(specs["wds"]).parent, shard_split, n, args.batch_size, args.workers)
                else:
                    got = ours_pass(sets[src], args.batch_size, args.workers)
                seconds[src].append(time.perf_counter() - t0)
                assert got == n * len(SIZES), (src, got)
                print(f"round {r + 1} {src}: {seconds[src][-1]:.1f} s", file=sys.stderr)
        total = n * len(SIZES)
        print(
            f"\ndata pipeline alone, sizes {' '.join(map(str, SIZES))} (one pass each), batch {args.batch_size}, "
            f"{args.workers} workers, {args.rounds} interleaved rounds\n"
        )
        print("| source | median images/s | range | ratio to folder (median) | ratio range |")
        print("|---|---|---|---|---|")
        for src in sources:
            rates = [total / s for s in seconds[src]]
            ratios = [f / s for f, s in zip(seconds["folder"], seconds[src], strict=True)]
            print(f"| {src} | {median(rates):.1f} | {spread(rates)} | {median(ratios):.3f} | {spread(ratios)} |")
    finally:
        close_handles()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
