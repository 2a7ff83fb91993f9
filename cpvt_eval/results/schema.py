"""The result schema: one row per cell, and the one definition of what identifies a cell.

``CellId`` lists the fields that make two cells the same computation. The stored key (``CellId.key``), the
``ResultRow`` columns, the reports' row labels and ``compare``'s matching are all derived from it, each field
tagged with its role:

* ``what``: the model and the size;
* ``weights``: the checkpoint's content and the EMA choice (``compare`` expects these to change between runs);
* ``data``: the dataset fingerprint and the subset;
* ``protocol``: everything else that changes predictions (crop, interpolation, PE options, dtype, model args,
  decoding, the probe and its settings).

Change any field and the cell is computed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields

# Bumped when the meaning of a stored row or key changes; recorded in every run directory.
SCHEMA_VERSION = 3

WHAT, WEIGHTS, DATA, PROTOCOL = "what", "weights", "data", "protocol"


def _id_field(role: str, short: str = "", default=MISSING, shared: bool = False, stable: bool = False):
    """``shared``: two cells are paired (the same images or views under the same conditions) only when they agree
    on every shared field; the others (the model, its weights, its PE options and arguments) may differ.
    ``stable``: the field has meant the same in every schema version, so a row an earlier version wrote is the same
    cell as a planned one when they agree on the stable fields (its key may differ: ``CellId.stable``)."""
    return field(default=default, metadata={"role": role, "short": short, "shared": shared, "stable": stable})


@dataclass(frozen=True)
class CellId:
    """What identifies a result cell. Every field is also a ``ResultRow`` column of the same name.

    A field with a default is left out of the key's hash while it holds that default, so that keys written
    before the field existed stay the same.
    """

    model: str = _id_field(WHAT, stable=True)
    img_size: int = _id_field(WHAT, stable=True)
    checkpoint_sha256: str = _id_field(WEIGHTS, "ckpt", stable=True)
    dataset_fingerprint: str = _id_field(DATA, "data", shared=True)
    limit: int | None = _id_field(DATA, "limit", shared=True)
    crop_pct: float = _id_field(PROTOCOL, "crop", shared=True, stable=True)
    interpolation: str = _id_field(PROTOCOL, "interp", shared=True, stable=True)
    pe_options: str = _id_field(PROTOCOL, "pe")
    dtype: str = _id_field(PROTOCOL, "dtype", shared=True, stable=True)
    model_args: str = _id_field(PROTOCOL, "args")
    ema: bool = _id_field(WEIGHTS, "ema", False)
    decode_draft: bool = _id_field(PROTOCOL, "draft", False, shared=True)
    # the measurement (``probes``) and its settings, empty for accuracy by size (``resolution``)
    probe: str = _id_field(PROTOCOL, "probe", "", shared=True, stable=True)
    # timm's crop modes (center, squash, border) and full (the whole image to size x size); schema 2's "squash" was
    # today's "full" and is migrated on reading (``store.migrate_row``)
    crop_mode: str = _id_field(PROTOCOL, "crop_mode", "center", shared=True, stable=True)
    # the normalisation of the weights evaluated (their own data config), as ``0.485,0.456,0.406``
    mean: str = _id_field(WEIGHTS, "mean", "")
    std: str = _id_field(WEIGHTS, "std", "")
    # the label subset the argmax is restricted to (ImageNet-A/-R's 200 classes): ``imagenet-a``, or a file's
    # name and a hash of its classes
    label_subset: str = _id_field(PROTOCOL, "subset", "", shared=True)

    @classmethod
    def of(cls, obj) -> CellId:
        """The identity of a row (or of any object with these attributes)."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})

    def key(self) -> str:
        """A short stable hash of the identity: the cell's name in the run directory."""
        payload = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is not MISSING and value == f.default:
                continue
            payload[f.name] = _canonical(value, f.type)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def match(self, roles: tuple[str, ...] = (WHAT, PROTOCOL)) -> tuple:
        """The values of the fields of ``roles``: ``compare`` matches cells on these and lets weights change."""
        return tuple(str(getattr(self, f.name)) for f in fields(self) if f.metadata["role"] in roles)

    def shared(self) -> tuple:
        """The values of the ``shared`` fields: what two cells must have in common to be paired."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.metadata["shared"])

    def stable(self) -> tuple:
        """The values of the ``stable`` fields: what a row of an earlier schema shares with the same cell now."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.metadata["stable"])

    def describe(self) -> str:
        return f"{self.model}@{self.img_size}px" + (f" ({self.probe})" if self.probe else "")


def _canonical(value, type_name: str):
    if value is None:
        return None
    if type_name.startswith("int"):
        return int(value)
    if type_name.startswith("float"):
        return float(value)
    return value


def id_fields(*roles: str) -> tuple:
    """``CellId``'s fields of the given roles (all of them when none is given)."""
    return tuple(f for f in fields(CellId) if not roles or f.metadata["role"] in roles)


KEY_FIELDS = tuple(f.name for f in fields(CellId))


@dataclass
class ResultRow:
    """One (model, checkpoint, size, protocol) cell. Accuracies in percent, computed once from integer counts."""

    model: str
    pe: str
    checkpoint: str
    checkpoint_sha256: str
    img_size: int
    grid: str
    resize_size: int
    crop_pct: float
    interpolation: str
    pe_policy: str
    dtype: str
    device: str
    n_images: int
    n_skipped: int
    correct1: int
    correct5: int
    top1: float | None  # None: the images have no labels (a label-free probe)
    top5: float | None
    top1_ci95: str
    params: int
    dataset: str
    dataset_fingerprint: str
    partial: bool
    limit: int | None
    model_args: str
    versions: str
    started_at: str
    duration_s: float
    # Scale-out: processes of the run, and the data-parallel rate of the whole pass (images / wall time of the data
    # pass at this size, all processes, decode and every model of the pass included). A probe's model-only speed
    # (``resolution``'s images_per_sec) answers another question and is never mixed with it.
    world_size: int = 1
    aggregate_images_per_sec: float | None = None
    extra: dict = field(default_factory=dict)
    # The data layer's columns: how the set was read, which bad files were left out.
    layout: str = ""
    label_source: str = ""
    skipped_files: str = ""  # ";"-separated relative paths of the images left out (n_skipped of them)
    decode_draft: bool = False
    ema: bool = False  # the checkpoint's EMA weights were evaluated (same file, other weights)
    pe_options: str = ""  # the requested APE/sin-cos handling; with the model and size it fixes ``pe_policy``
    native_size: int | None = None  # the model's training size: the reference of "change from native"
    predictions: str = ""  # per-image predictions, relative to the run directory
    probe: str = ""  # see CellId.probe
    crop_mode: str = "center"  # see CellId.crop_mode
    mean: str = ""  # see CellId.mean
    std: str = ""
    # where mean/std came from (``timm:<tag>``, a checkpoint's metadata, the spec), and the weights' own crop ratio
    # and interpolation (the run's protocol may differ from them: ``crop_pct``, ``interpolation``)
    data_config_source: str = ""
    weights_crop_pct: float | None = None
    weights_interpolation: str = ""
    n_nonfinite: int = 0  # images whose logits held a NaN or an infinity (their predictions mean nothing)
    label_subset: str = ""  # see CellId.label_subset
    test_set: str = ""  # the test set the images are: imagenet-val, imagenet-v2, imagenet-a, ... (given or detected)
    # the classes the labels and outputs index: imagenet-1k, or custom-<n>:<hash of the names> (data.label_space)
    label_space: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ResultRow:
        """A row from its stored form, as the type of its probe (``register_row_type``) when read as a
        ``ResultRow``; keys the type does not know go to ``extra``. A probe column that an earlier version kept in
        ``extra`` is read back into its column."""
        if cls is ResultRow:
            cls = row_type_of(d.get("probe") or "")
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        # an empty column of another probe (written when every row carried every probe's columns) says nothing
        extra = {k: v for k, v in d.items() if k not in names and v is not None}
        stored_extra = dict(known.pop("extra", None) or {})
        for name in names - set(known):
            if name in stored_extra:
                known[name] = stored_extra.pop(name)
        row = cls(**known)
        row.extra = {**stored_extra, **extra}
        return row


# probe name -> the row type of its cells (a ``ResultRow`` subclass with the probe's columns)
_ROW_TYPES: dict[str, type[ResultRow]] = {}


# The probe whose cells keep the keys of the versions before probes existed: its ``CellId.probe`` is empty.
FIRST_PROBE = "resolution"


def probe_name(probe: str) -> str:
    """The probe of a ``CellId.probe`` text: ``shift:random,max=auto,...`` -> ``shift``; ``""`` (accuracy by size)
    -> ``resolution``."""
    return probe.split(":", 1)[0] or FIRST_PROBE


def probe_identity(name: str, parts: list[str]) -> str:
    """The ``CellId.probe`` text of probe ``name`` with its identity settings ``parts`` (the inverse of
    ``probe_name``): ``shift:random,max=auto,epochs=5,seed=0``; ``""`` for the first probe without settings."""
    if name == FIRST_PROBE and not parts:
        return ""
    return name + (":" + ",".join(parts) if parts else "")


def register_row_type(name: str, row_type: type[ResultRow]) -> type[ResultRow]:
    """Rows whose probe is ``name`` read back as ``row_type``; a second registration of a name raises."""
    if _ROW_TYPES.get(name, row_type) is not row_type:
        raise ValueError(f"probe {name!r} already has a row type ({_ROW_TYPES[name].__name__})")
    _ROW_TYPES[name] = row_type
    return row_type


def row_type_of(probe: str) -> type[ResultRow]:
    """The row type of the cells of a ``CellId.probe`` text (``ResultRow`` for a probe not registered). The probes
    register their row types as ``cpvt_eval.probes`` imports them, which the package root does: a run directory read
    by itself (``RunStore(path).rows()``) gives its rows typed."""
    return _ROW_TYPES.get(probe_name(probe), ResultRow)


CSV_COLUMNS = [f.name for f in fields(ResultRow) if f.name != "extra"]
assert set(KEY_FIELDS) <= set(CSV_COLUMNS), "every CellId field is a ResultRow column"


def row_key(row: ResultRow) -> str:
    return CellId.of(row).key()


def pe_options_label(ape_interpolation: str, antialias: bool, sincos: str | None = None) -> str:
    label = f"ape={ape_interpolation},antialias={str(bool(antialias)).lower()}"
    return label if sincos is None else f"{label},sincos={sincos}"
