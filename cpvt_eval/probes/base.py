"""The probe interface: one measurement of models at sizes, in one module.

A probe declares what it computes and, apart from that, what it reports:

* **computation**: its ``Settings`` (a frozen dataclass: the probe's own options, declared with ``option``; those
  marked ``identity`` are part of every cell's identity), the decoded images of a pass (``transform``) and the
  views of a batch every model sees (``views``), an ``accumulator`` per (model, size) that reads each model's
  outputs batch by batch and ``finish``-es into a ``Cell`` (counts, the probe's typed columns, the arrays it
  keeps), whether it needs labels (``needs_labels``), whether its cells need each model's native-size cell first
  (``reference``: that cell's arrays are handed to the other sizes' accumulators, and read back on a resumed run),
  whether its passes may be split over torchrun processes (``distributed``), and the model-only timing it asks for
  after each size's pass (``timing``);
* **presentation**: its typed row columns (``row_type``, fields declared with ``column``), its report declaration
  (``report``, a ``ReportSpec``: data and a few small functions), and the outcome of each trial for the paired
  test between models (``outcomes``).

Those twelve members are all a probe sets or overrides. The data pass (``engine.run_pass``), the job
(``jobs.run``: inputs checked, cells planned, resumed, committed, timed), the command (``cli.probes``), the
reports (``report.pipeline``) and the public API (``cpvt_eval.run_probe``) serve every registered probe from them.
The per-image work every probe shares (top-k in the class-index dtype, labels, positions, hits) is ``PerImage``,
and ``pack`` is the one way arrays are stored.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..results import ResultRow, probe_identity, register_row_type
from .presentation import ReportSpec

if TYPE_CHECKING:
    import torch

    from ..data import ImageSet
    from ..engine import EvalModel, EvalSettings, PassInfo


def column(md: str = "", fmt: str = "", default=None):
    """A probe's row column. ``md``: its header in the Markdown table of cells (none: CSV and JSON only);
    ``fmt``: how Markdown formats it (``.2f``; empty: as text)."""
    return field(default=default, metadata={"md": md, "fmt": fmt})


def probe_columns(row_type: type[ResultRow]) -> list:
    """The fields a probe's row type adds to ``ResultRow``, in declaration order."""
    base = {f.name for f in fields(ResultRow)}
    return [f for f in fields(row_type) if f.name not in base]


def column_names(row_type: type[ResultRow]) -> tuple[str, ...]:
    return tuple(f.name for f in probe_columns(row_type))


def option(
    default,
    help: str | None,
    *,
    flag: str = "",
    identity: str | None = None,
    auto: str = "",
    min: float | None = None,
    metavar: str = "",
    panel: str = "",
    alone: str | None = None,
):
    """A field of a probe's ``Settings``: an option of the probe's command (``--<name>``, or ``flag`` for another
    spelling such as ``--throughput/--no-throughput``), with its ``help`` (None: no option, a fixed setting), its
    ``min``imum, ``metavar`` and help ``panel`` (default: the probe's own); ``alone``: the value the option takes
    when it is given without one (``--real-labels`` alone).

    ``identity``: the field is part of every cell's identity, written ``<identity>=<value>`` (an empty ``identity``
    writes the value alone); ``auto`` is how a None value is written there."""
    meta = {
        "help": help,
        "flag": flag,
        "identity": identity,
        "auto": auto,
        "min": min,
        "metavar": metavar,
        "panel": panel,
        "alone": alone,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ProbeSettings:
    """The base of a probe's ``Settings`` (a frozen dataclass of ``option`` fields); alone, a probe without options
    of its own."""

    def check(self, sizes, image_set) -> None:
        """Refuse settings that cannot run at ``sizes`` on ``image_set``, before any model is built."""


def identity_parts(settings) -> list[str]:
    """The settings' identity fields as ``key=value`` texts, in declaration order."""
    parts = []
    for f in fields(settings):
        key = f.metadata.get("identity")
        if key is None:
            continue
        value = getattr(settings, f.name)
        text = f.metadata.get("auto", "") if value is None else str(value)
        parts.append(f"{key}={text}" if key else text)
    return parts


# -- what a probe computes ----------------------------------------------------------------------------------------


def class_index_dtype(num_classes: int):
    """The dtype of stored class indices: int16 while the classes fit in it (ImageNet-1k and -21k do not both)."""
    import torch

    return torch.int16 if num_classes <= 32767 else torch.int32


# A per-image record larger than this is mapped onto a scratch file rather than held on the heap.
OFF_HEAP_BYTES = 64 * 2**20


def per_image(shape: tuple[int, ...], dtype, scratch: Path | None = None) -> torch.Tensor:
    """An uninitialised per-image record: on the heap, or, when it is large (``OFF_HEAP_BYTES``) and there is a
    ``scratch`` folder, mapped onto an unlinked file there, so that the page cache holds it (a softmax over 21,000
    classes for 50,000 images is 4.3 GB) and nothing is left behind however the run ends."""
    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    if scratch is None or math.prod(shape) * itemsize < OFF_HEAP_BYTES:
        return torch.empty(shape, dtype=dtype)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch) as f:  # the map keeps the file alive after it is closed
        array = np.memmap(f, dtype=torch.empty((), dtype=dtype).numpy().dtype, mode="w+", shape=shape)
    return torch.from_numpy(array)


def pack(arrays: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The one packer of stored arrays: booleans as uint8, floats as float32, int64 as int32 where the values fit;
    narrower integers (class indices in int16, counts in uint8) as they are."""
    out = {}
    for name, t in arrays.items():
        a = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)  # a float32 record (a mapped one too) is stored as it is
        elif a.dtype == np.int64 and (a.size == 0 or (a.min() >= -(2**31) and a.max() < 2**31)):
            a = a.astype(np.int32)
        out[name] = np.ascontiguousarray(a)
    return out


class PerImage:
    """The per-image work every probe shares, over ``n`` rows of a pass: the top-``k`` classes of each view it is
    given (``tops``: one array per view of a row, ``top5`` by default), the label and the position in the ImageSet.

    ``counts`` derives the accuracy every row carries from them: top-1 and top-5 hits over every view, out of rows
    x views; images without a label (-1) are never hits.
    """

    def __init__(self, n: int, k: int, num_classes: int, tops: tuple[str, ...] = ("top5",)):
        import torch

        self.k = k
        dtype = class_index_dtype(num_classes)
        self.records: dict[str, torch.Tensor] = {name: torch.empty((n, k), dtype=dtype) for name in tops}
        self.records["labels"] = torch.empty(n, dtype=torch.int64)
        self.records["indices"] = torch.empty(n, dtype=torch.int64)
        self.tops = tops

    def record(self, at: slice, batch, out, top: str = "top5"):
        """Keep the top-``k`` of ``out`` (a model's outputs on a view), the labels and positions of ``batch`` at
        rows ``at``; returns the top-``k`` (on the device) for the probe's own use."""
        pred = out.top(self.k)
        self.records[top][at] = pred.to("cpu", self.records[top].dtype)
        self.records["labels"][at] = batch.target
        self.records["indices"][at] = batch.indices
        return pred

    def counts(self) -> tuple[int, int, int]:
        """``(correct1, correct5, n)`` over every view of every row."""
        labels = self.records["labels"].view(-1, 1)
        c1 = c5 = 0
        for name in self.tops:
            hits = self.records[name].long().eq(labels)
            c1 += int(hits[:, 0].sum())
            c5 += int(hits.any(dim=1).sum())
        return c1, c5, len(labels) * len(self.tops)

    @property
    def labelled(self) -> bool:
        return bool((self.records["labels"] >= 0).all())


@dataclass
class Cell:
    """One finished (model, size) cell of a probe: how the model ran, the accuracy every row has, the probe's typed
    columns and the arrays stored beside the row."""

    info: PassInfo
    counts: tuple[int, int, int]  # correct1, correct5, n
    columns: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)  # numpy, as ``pack`` leaves them
    labelled: bool = True  # the images have labels (else the accuracy columns are empty)

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def size(self) -> int:
        return self.info.size


class Accumulator:
    """What a probe computes of one model at one size over a pass: ``update`` with each view of each batch,
    then ``finish`` into the ``Cell``. The default is accuracy: the shared per-image records alone."""

    def __init__(self, n: int, k: int, num_classes: int, tops: tuple[str, ...] = ("top5",)):
        self.core = PerImage(n, k, num_classes, tops)

    @property
    def records(self) -> dict:
        """Every per-image record (first dimension: the rows of the pass): what torchrun gathers and merges."""
        return self.core.records

    def update(self, batch, view, out) -> None:
        self.core.record(batch.at, batch, out)

    def columns(self) -> dict:
        """The probe's typed columns of the finished cell."""
        return {}

    def stored(self) -> dict:
        """The records stored beside the row (default: all)."""
        return self.records

    def finish(self, info: PassInfo) -> Cell:
        return Cell(info, self.core.counts(), self.columns(), pack(self.stored()), self.core.labelled)


# probe name -> its class: every ``Probe`` subclass defined in a module of this package, registered as it is defined
PROBE_TYPES: dict[str, type] = {}


class Probe:
    """A measurement of models at sizes. Subclasses set the members below (all optional but ``name``,
    ``row_type``, ``report`` and usually ``accumulator``); a subclass defined in a module of ``cpvt_eval.probes``
    registers itself under its ``name``, its row type with it. ``Probe(settings)`` holds the run's settings."""

    # -- computation
    name: str = ""
    Settings: type = ProbeSettings
    needs_labels: bool = True
    reference: bool = False  # each model's native-size cell first; its arrays are the other sizes' reference
    distributed: bool = False  # the records of a cell merge image by image under torchrun

    def transform(self, m: EvalModel, size: int, settings: EvalSettings):
        """What decodes the images of a pass (default: the model's eval transform at ``size``)."""
        return m.transform_at(size, settings)

    def views(self, images, batch, size: int):
        """What the models see of a batch: the decoded images as they are (one view)."""
        from ..engine import View

        yield View(images)

    def accumulator(
        self, m: EvalModel, size: int, image_set: ImageSet, settings: EvalSettings, reference: dict | None = None
    ) -> Accumulator:
        """The accumulator of ``m`` at ``size`` over a pass of ``image_set`` (under torchrun: this process's shard);
        ``reference``: the arrays of the model's native cell, by image position (probes with ``reference``)."""
        return Accumulator(len(image_set), settings.k_for(m), m.num_classes)

    def timing(self):
        """The model-only timing of each size's models after its pass (a ``ThroughputConfig``), or None."""
        return None

    # -- presentation
    row_type: type[ResultRow] = ResultRow
    report: ReportSpec | None = None

    def outcomes(self, store, row: ResultRow):
        """``(trials, outcome)`` of a stored cell for the paired test: an (n, ...) int array naming each trial in a
        fixed order, and its boolean outcome (default: each image, top-1 correct)."""
        a = store.load_predictions(row)
        order = np.argsort(a["indices"], kind="stable")
        correct = a["top5"][order, 0].astype(np.int64) == a["labels"][order].astype(np.int64)
        return a["indices"][order].astype(np.int64)[:, None], correct

    # -- derived, never overridden

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith(__package__ + ".") and cls.name:
            PROBE_TYPES[cls.name] = cls
            register_row_type(cls.name, cls.row_type)

    def __init__(self, settings=None, **options):
        self.settings = settings if settings is not None else self.Settings(**options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

    def identity(self) -> str:
        """The probe and its identity settings as a cell identity records it (``CellId.probe``)."""
        return probe_identity(self.name, identity_parts(self.settings))

    def summary(self) -> dict:
        """The probe's settings, as the provenance record keeps them."""
        return {self.name: dataclasses.asdict(self.settings)} if fields(self.settings) else {}

    @property
    def follows_crop(self) -> bool:
        """The run's crop ratio is part of the measurement (the probe decodes with the eval transform)."""
        return type(self).transform is Probe.transform

    @property
    def shares_passes(self) -> bool:
        """The probe sees the eval transform's images as they are, so it can share a pass with another such probe."""
        return type(self).transform is Probe.transform and type(self).views is Probe.views
