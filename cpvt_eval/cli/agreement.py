"""``cpvt-eval agreement``: how far each model's decisions at each size agree with its own at its native size."""

from __future__ import annotations

from .app import MultiValueCommand, app
from .measure import measure, measuring
from .options import SizesOpt


@app.command(
    cls=MultiValueCommand,
    epilog=(
        "Example: cpvt-eval agreement -m cpvt_ti -m deit_ti --sizes 224:512:32 --data ~/photos/field-survey "
        "--checkpoint cpvt_ti=cpvt_ti.pth --out runs/agreement   (any folder of images, nested or flat: no labels "
        "needed; on ImageNet val, top-1 is reported beside)"
    ),
)
@measuring(crop=True)
def agreement(
    sizes: SizesOpt = ["224", "384", "448", "512"],  # noqa: B006 (typer reads the default; it is never mutated)
    **shared,
) -> None:
    """How often each model's top-1 at each size equals its own top-1 at its native size, on any images.

    The reference is the model's prediction at its training size (always computed, once per model, first). Per size:
    agreement (% of images whose top-1 is the native one, Wilson interval), top-5 overlap with the native top-5, and
    the mean KL divergence from the native softmax; where the images have labels, top-1 and top-5 beside. --data may
    be any folder of images without labels. Writes rows.jsonl, per-image agreement, provenance.json and
    agreement.md/.csv/.tex/.json and agreement_vs_resolution.png (exact McNemar tests between models on "agrees with
    native") to the run directory; rerunning resumes, Ctrl-C stops with exit code 130 and keeps finished cells.
    """
    from ..probes import Agreement

    measure(Agreement(), sizes=sizes, **shared)
