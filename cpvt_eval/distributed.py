"""Scale-out under ``torchrun``: one process per device, exact sharding, predictions gathered to rank 0.

``torchrun --nproc_per_node=N -m cpvt_eval resolution ...`` starts N copies of the command. Each process takes
the device of its ``LOCAL_RANK`` (NCCL on CUDA, gloo on CPU), evaluates its own shard of the dataset, and sends
its per-image predictions to rank 0, which checks that every image was seen exactly once and alone writes the
run directory.

Sharding differs from the ``DistributedSampler`` of DeiT's ``--dist-eval`` on purpose: that sampler pads the
last shard with repeated images, which moves the accuracy with the number of processes. Here the shards are
contiguous runs of whole batches of the single-process order, with no padding; every image is evaluated once,
in the same batch as in a one-process run, so the predictions (and top-1/top-5) do not depend on the number of
processes.

All communication goes through *rounds*: every rank sends a status (and a payload) to rank 0, which answers with
one verdict broadcast to all. A rank that fails takes part in the round the others are in with its error
instead, so every rank stops with that rank's message rather than waiting forever on a collective. A rank that
dies outright (killed, out of memory) is torchrun's to handle: it stops the other processes of the job.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist

from .data import ImageSet
from .data.loader import end_with_parent
from .engine import EvalModel, PassInfo
from .errors import EXIT_CHECK_FAILED, CheckpointError, CpvtEvalError, DataError

# Exit code of an unexpected exception on a rank: what Python itself returns for an uncaught exception.
EXIT_CRASH = EXIT_CHECK_FAILED


class DistributedError(CpvtEvalError):
    """A torchrun launch that cannot run as asked: a bad environment or device, ranks that disagree."""


class RankFailedError(DistributedError):
    """Another rank failed; carries that rank's message and exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launched() -> bool:
    """True inside a process started by torchrun (or another launcher that sets the same variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise DistributedError(f"environment variable {name} is not set (start the job with torchrun)")
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not a whole number") from None


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of one torchrun process: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when CUDA is there, else CPU."""
    if name == "cpu":
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if name == "cuda":
                raise DistributedError("--device cuda asked for, but no CUDA device is available")
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(
                f"LOCAL_RANK {local_rank} has no GPU of its own: this node has {count}; "
                f"start at most {count} processes per node (--nproc_per_node)"
            )
        return torch.device("cuda", local_rank)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DistributedError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda":
        raise DistributedError(
            f"--device {name} names one GPU, but under torchrun each process takes cuda:LOCAL_RANK; "
            "use --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    raise DistributedError(f"--device {name} cannot be used under torchrun; use auto, cuda or cpu")


def shard_bounds(n: int, world_size: int, rank: int, batch_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s shard: a contiguous run of whole batches, no padding.

    The ``ceil(n / batch_size)`` batches of the one-process order are split into ``world_size`` runs whose
    lengths differ by at most one batch; the last batch may be short, as in a one-process run. With fewer
    batches than ranks some shards are empty.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    batches = -(-n // batch_size)
    first = batches * rank // world_size
    last = batches * (rank + 1) // world_size
    return min(n, first * batch_size), min(n, last * batch_size)


@dataclass
class Shard:
    """The samples one rank evaluates: ``image_set`` holds the global samples ``[start, stop)``."""

    image_set: ImageSet
    start: int
    stop: int
    total: int


def shard_image_set(image_set: ImageSet, world_size: int, rank: int, batch_size: int) -> Shard:
    start, stop = shard_bounds(len(image_set), world_size, rank, batch_size)
    part = replace(image_set, samples=image_set.samples[start:stop])
    return Shard(image_set=part, start=start, stop=stop, total=len(image_set))


def cell_payload(cell: tuple, records: dict, info: PassInfo, shard: Shard) -> dict:
    """What a rank sends for one cell: which cell, how the model ran, and its per-image records with the images
    under their global positions."""
    return {
        "cell": cell,
        "info": asdict(info),
        "records": {**records, "indices": records["indices"] + shard.start},
    }


# How the ranks' ``PassInfo`` of one cell combine; every other field is the same on every rank. The ranks start a pass
# together, so the slowest rank's time is the wall time of the data-parallel pass.
_COMBINE = {"duration_s": max, "batch_size": min, "oom_retries": sum, "nonfinite": sum}


def merge_cells(parts: list[dict], n_total: int) -> tuple[dict, PassInfo]:
    """Join the ranks' payloads of one cell (in rank order) into the records and ``PassInfo`` of the whole dataset:
    every per-image record concatenated and put back in dataset order.

    Raises:
        DistributedError: the ranks sent different cells, or an image is missing or was evaluated twice.
    """
    first = parts[0]
    name = f"{first['info']['model']} at {first['info']['size']}px"
    for rank, p in enumerate(parts):
        if p["cell"] != first["cell"]:
            raise DistributedError(
                f"rank {rank} sent {p['info']['model']} at {p['info']['size']}px while rank 0 sent {name}: the "
                "ranks disagree on the cells to evaluate"
            )
    indices = torch.cat([p["records"]["indices"] for p in parts])
    counts = torch.bincount(indices, minlength=n_total) if indices.numel() else torch.zeros(n_total, dtype=torch.long)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_total):
        raise DistributedError(f"gathered predictions of {name} hold an index outside 0..{n_total - 1}")
    missing = (counts == 0).nonzero().flatten()
    twice = (counts > 1).nonzero().flatten()
    if missing.numel() or twice.numel():
        what = []
        if missing.numel():
            what.append(f"{missing.numel()} image(s) missing (first: index {int(missing[0])})")
        if twice.numel():
            what.append(f"{twice.numel()} image(s) evaluated more than once (first: index {int(twice[0])})")
        raise DistributedError(f"gathered predictions of {name} are incomplete: {'; '.join(what)}")
    order = torch.argsort(indices)
    records = {key: torch.cat([p["records"][key] for p in parts])[order] for key in first["records"]}
    info = {
        key: _COMBINE[key]([p["info"][key] for p in parts]) if key in _COMBINE else value
        for key, value in first["info"].items()
    }
    return records, PassInfo(**info)


def check_same_inputs(parts: list[dict]) -> list[dict]:
    """Compare every rank's dataset and weights with rank 0's; return each rank's host and device.

    Raises:
        DataError: a rank indexed another dataset (other files, sizes or labels).
        CheckpointError: a rank loaded other weights for a model.
    """
    ref = parts[0]
    for rank, p in enumerate(parts[1:], start=1):
        if (p["n"], p["fingerprint"]) != (ref["n"], ref["fingerprint"]):
            raise DataError(
                f"rank {rank} ({p['host']}) sees another dataset than rank 0: {p['n']} images, fingerprint "
                f"{p['fingerprint']} against {ref['n']} images, {ref['fingerprint']}"
            )
        for key, sha in ref["checkpoints"].items():
            if p["checkpoints"].get(key) != sha:
                raise CheckpointError(f"rank {rank} ({p['host']}) loaded other weights for {key} than rank 0")
    return [{"rank": r, "host": p["host"], "device": p["device"]} for r, p in enumerate(parts)]


def _error_item(rank: int, exc: BaseException) -> tuple:
    if isinstance(exc, CpvtEvalError):
        return ("error", rank, str(exc).strip().splitlines()[0] if str(exc).strip() else "error", exc.exit_code)
    code = getattr(exc, "exit_code", None)  # typer.Exit after the command has already reported
    if isinstance(code, int):
        return ("error", rank, f"stopped with exit code {code}", code)
    return ("error", rank, f"{type(exc).__name__}: {exc}", EXIT_CRASH)


def _first_error(parts: list) -> tuple | None:
    return next((p for p in parts if p[0] == "error"), None)


def _object_kwargs() -> dict:
    # Rank 0 unpickles what the other ranks send; where torch can, it reads the messages with the same
    # restricted unpickler as ``torch.load(weights_only=True)`` (tensors, numbers, strings and containers only).
    if "weights_only" in inspect.signature(dist.gather_object).parameters:
        return {"weights_only": True}
    return {}


@dataclass
class DistContext:
    """Where this process stands in the job. ``enabled`` is False for a plain one-process run."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device | None = None
    backend: str = ""
    ranks: list[dict] = field(default_factory=list)  # host and device of every rank, known on rank 0
    _group: object = None
    _owns_group: bool = False
    _pending: bool = False  # rank 0 has gathered a round and not yet sent the verdict
    _failed: bool = False  # an error verdict went out: every rank is stopping
    _kwargs: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        """Join the torchrun job described by the environment; a plain run (or a world of one) stays local."""
        if not launched():
            return cls()
        world_size = _env_int("WORLD_SIZE")
        if world_size <= 1:
            return cls()
        if os.environ.get("TORCHELASTIC_RUN_ID"):  # a rank of torchrun's agent ends with it (a SIGKILL to torchrun)
            end_with_parent(os.getppid())
        local_rank = _env_int("LOCAL_RANK", 0)
        local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
        rank_dev = rank_device(device, local_rank)
        backend = "nccl" if rank_dev.type == "cuda" else "gloo"
        if rank_dev.type == "cuda":
            torch.cuda.set_device(rank_dev)
        owns = False
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend=backend)
            except (ValueError, RuntimeError) as e:
                raise DistributedError(f"cannot join the torchrun process group ({backend}): {e}") from None
            owns = True
        # Predictions and statuses are CPU objects: a gloo group carries them even when the models run on NCCL,
        # so they never take GPU memory or a device copy.
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return cls(
            enabled=True,
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            local_world_size=local_world_size,
            device=rank_dev,
            backend=dist.get_backend(),
            _group=group,
            _owns_group=owns,
            _kwargs=_object_kwargs(),
        )

    def describe(self) -> dict:
        """The job's shape for provenance."""
        if not self.enabled:
            return {"world_size": 1}
        return {"world_size": self.world_size, "backend": self.backend, "ranks": self.ranks}

    # -- rounds -------------------------------------------------------------------------------------------------

    def _gather(self, item) -> list | None:
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(item, parts, dst=0, group=self._group, **self._kwargs)
        self._pending = self.is_main
        return parts

    def _decide(self, verdict=None, own: BaseException | None = None):
        """Send rank 0's ``verdict`` to every rank; an error verdict raises on every rank."""
        box = [verdict]
        dist.broadcast_object_list(box, src=0, group=self._group, **self._kwargs)
        self._pending = False
        verdict = box[0]
        if verdict[0] == "error":
            self._failed = True
            _, rank, message, code = verdict
            if own is not None and rank == self.rank:
                raise own
            raise RankFailedError(f"rank {rank} of {self.world_size}: {message}", code)
        return verdict

    def _round(self, payload=None, decide: Callable[[list], object] | None = None):
        """One full round: every rank sends ``payload``; rank 0 returns ``decide(payloads)`` to all."""
        parts = self._gather(("ok", payload))
        if not self.is_main:
            return self._decide()[1]
        error = _first_error(parts)
        if error is not None:
            self._decide(error)
        try:
            value = decide([p[1] for p in parts]) if decide else None
        except Exception as exc:
            self._decide(_error_item(self.rank, exc), own=exc)
        return self._decide(("ok", value))[1]

    def _fail(self, exc: BaseException) -> None:
        """Share this rank's failure in the round the other ranks are in (they will raise its message)."""
        item = _error_item(self.rank, exc)
        try:
            if self.is_main and self._pending:
                self._decide(item)
            elif self.is_main:
                parts = self._gather(item)
                self._decide(_first_error(parts))
            else:
                self._gather(item)
                self._decide()
        except RankFailedError:
            pass  # the verdict names this rank's error (or an earlier rank's): the caller re-raises its own
        self._failed = True

    # -- the job's steps ----------------------------------------------------------------------------------------

    def shard(self, image_set: ImageSet, batch_size: int) -> Shard:
        """This rank's shard; the whole set in a one-process run."""
        if not self.enabled:
            return Shard(image_set=image_set, start=0, stop=len(image_set), total=len(image_set))
        return shard_image_set(image_set, self.world_size, self.rank, batch_size)

    def check_inputs(self, image_set: ImageSet, models: list[EvalModel]) -> None:
        """Every rank must see the same images and weights (on several nodes each reads its own copies)."""
        if not self.enabled:
            return
        mine = {
            "host": socket.gethostname(),
            "device": str(self.device),
            "n": len(image_set),
            "fingerprint": image_set.fingerprint,
            "checkpoints": {m.name: m.checkpoint_sha256 for m in models},
        }
        self.ranks = self._round(mine, check_same_inputs)

    def agree(self, value):
        """Rank 0's ``value``, on every rank (e.g. which cells a resumed run still has to compute)."""
        if not self.enabled:
            return value
        return self._round(None, lambda _parts: value)

    def gather_cells(self, done: Iterable[tuple[tuple, object, PassInfo]], shard: Shard) -> Iterator[tuple]:
        """The finished pass's cells ``(cell, work, info)`` over the whole dataset, on rank 0: each rank's
        per-image records (``work.accumulator.records``) are gathered and merged into rank 0's accumulator; the
        other ranks evaluate their shards and yield nothing.

        The caller's work on a yielded cell (writing it, timing the model) happens while the other ranks wait,
        so a timing is never disturbed by another rank's data pass.
        """
        local = iter(done)
        if not self.enabled:
            yield from local
            return
        while True:
            item = next(local, None)
            if item is None:
                payload = ("done", None)
            else:
                cell, work, info = item
                payload = ("ok", cell_payload(cell, work.accumulator.records, info, shard))
            parts = self._gather(payload)
            if not self.is_main:
                if self._decide()[0] == "done":
                    return
                continue
            error = _first_error(parts)
            if error is not None:
                self._decide(error)
            kinds = {p[0] for p in parts}
            if kinds == {"done"}:
                self._decide(("done", None))
                return
            if "done" in kinds:
                exc = DistributedError("the ranks disagree on the cells to evaluate (some ranks finished early)")
                self._decide(_error_item(self.rank, exc), own=exc)
            records, info = merge_cells([p[1] for p in parts], shard.total)
            work.accumulator.records.clear()
            work.accumulator.records.update(records)
            yield cell, work, info
            self._decide(("ok", None))

    @contextmanager
    def shared_failures(self):
        """Make a failure inside the block stop every rank with this rank's message."""
        try:
            yield self
        except Exception as exc:
            if self.enabled and not self._failed:
                self._fail(exc)
            raise

    def close(self) -> None:
        """Leave the job together: every rank waits here until rank 0 is done (it may still be printing)."""
        if not self.enabled:
            return
        try:
            self._round()
        except RankFailedError:
            if not self._failed:
                raise
        finally:
            if self._owns_group:
                dist.destroy_process_group()
                self._owns_group = False


@contextmanager
def session(device: str = "auto") -> Iterator[DistContext]:
    """The process's place in a torchrun job for the duration of a command (a local context otherwise).

    Errors in the block are shared with the other ranks; on the way out every rank waits for rank 0, so that
    torchrun does not stop rank 0 (because another rank already exited) before it has reported.
    """
    ctx = DistContext.from_env(device)
    try:
        with ctx.shared_failures():
            yield ctx
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C reaches every process of the job; nobody waits for anybody.
        if ctx.enabled and ctx._owns_group:
            dist.destroy_process_group()
            ctx._owns_group = False
        raise
    except Exception:
        ctx.close()
        raise
    ctx.close()
