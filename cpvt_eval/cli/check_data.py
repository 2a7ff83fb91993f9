"""``cpvt-eval check-data``: index a validation set in its layout and decode every image, listing each problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import console
from ..errors import EXIT_CHECK_FAILED, DataError, shown
from .app import app, guarded


def unlabelled_images(data: Path, options: dict) -> bool:
    """Whether ``data`` opens as a set of images without labels (the ``images`` layout)."""
    from ..data import open_dataset

    try:
        return not open_dataset(data, require_labels=False, **options).has_labels
    except DataError:
        return False


@app.command(
    "check-data",
    epilog=(
        "Example: cpvt-eval check-data /datasets/imagenet/val  ·  "
        "cpvt-eval check-data val_flat --labels LOC_val_solution.csv --json  ·  "
        "cpvt-eval check-data 'shards/imagenet1k-validation-{00..63}.tar'  ·  "
        "cpvt-eval check-data hf/imagenet-1k/data --split validation"
    ),
)
def check_data(
    data: Annotated[
        Path,
        typer.Argument(
            help="Dataset folder (any layout), manifest CSV, WebDataset shards ('val-{00..63}.tar', a folder of "
            "them, _info.json) or Hugging Face parquet/arrow files (a file, a folder, a save_to_disk folder)."
        ),
    ],
    layout: Annotated[
        str, typer.Option(help="auto, imagefolder, flat, imagenetv2, manifest, images, wds, parquet or arrow.")
    ] = "auto",
    labels: Annotated[
        Optional[Path], typer.Option(help="Devkit ground truth, Kaggle LOC_val_solution.csv or a path,label manifest.")
    ] = None,
    classes: Annotated[Optional[Path], typer.Option(help="File of WordNet ids: check only these classes.")] = None,
    label_key: Annotated[
        Optional[str],
        typer.Option(help="Where a store holds the label: a shard's .json field, a parquet/arrow column."),
    ] = None,
    split: Annotated[
        Optional[str], typer.Option(help="The split of a store that holds several (default: validation).")
    ] = None,
    require_labels: Annotated[
        bool,
        typer.Option(
            "--require-labels/--no-labels",
            help="--no-labels: check a set as the label-free commands read it (an unlabelled folder is `images`).",
        ),
    ] = True,
    workers: Annotated[
        Optional[int], typer.Option("--workers", "-j", min=0, help="Data loader workers (default: the cores).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Write the findings as JSON on stdout.")] = False,
) -> None:
    """Decode every image of a validation set and list every problem (empty, not an image, truncated).

    Stores are checked in place: a problem names the shard member (``shard.tar/KEY.jpg``), the parquet/arrow row
    (``file.parquet[row 12]``), or the shard / row group that cannot be read.

    Also reports the layout, the label source, whether it is the full 50,000-image set, the fingerprint that
    result rows carry, and odd but valid files (CMYK, grayscale, PNG data behind a .JPEG name). Exit code 0
    when every image decodes, 1 when some do not (or a folder cannot be read, or a link is a loop), 2 when the
    set cannot be indexed. Every problem is listed in one pass.
    """
    from ..data import default_workers, open_dataset, scan_images
    from ..data.images import ImageCheck

    with guarded():
        options = dict(layout=layout, labels=labels, classes=classes, label_key=label_key, split=split)
        try:
            image_set = open_dataset(data, require_labels=require_labels, **options)
        except DataError as e:
            if not require_labels or not unlabelled_images(data, options):
                raise
            # a folder of photos without labels: say how to check it as the label-free commands read it
            raise DataError(
                f"{e}; if these images have no labels, check them with --no-labels "
                f"(cpvt-eval check-data {shown(data)} --no-labels)"
            ) from None
        problems = [ImageCheck(rel, problem=why) for rel, why in image_set.unreadable]
        notes = []
        checks = scan_images(
            image_set,
            full=True,
            workers=default_workers() if workers is None else workers,
            progress=console.BarProgress(),
        )
        for check in checks:  # streamed: only the findings are kept
            if check.problem:
                problems.append(check)
            elif check.note:
                notes.append(check)
        summary = {
            "root": image_set.source,
            "layout": image_set.layout,
            "label_source": image_set.label_source,
            "has_labels": image_set.has_labels,
            "split": image_set.split,
            "n_images": len(image_set),
            "n_classes": len({s.label for s in image_set.samples if s.label >= 0}),
            "full_val": image_set.is_full_imagenet_val,
            "fingerprint": image_set.fingerprint,
            "problems": [{"path": c.relpath, "problem": c.problem} for c in problems],
            "notes": [{"path": c.relpath, "note": c.note} for c in notes],
        }
        if json_out:
            print(json.dumps(summary, indent=2))
        else:
            console.print_data_check(summary)
        if problems:
            raise typer.Exit(code=EXIT_CHECK_FAILED)
