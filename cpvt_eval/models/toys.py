"""The offline demo's toy models as the model layer knows them: the classes of the demo's world and the weights that
ship inside the package (``cpvt_eval/resources/demo/<name>.safetensors``).

They live here, below the demo, so that a toy loads by name anywhere (``cpvt-eval resolution -m deit_toy``) as the
demo loads it: a shipped file is that toy's default weights, and the world's ten class names are the label space of
those weights, so that the demo's dataset folder (one folder per class name) is read without a class map.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The world's colour pairs (``demo/dataset.py`` renders them). Class 2k is colour a left of colour b, class 2k + 1 is
# b left of a: the two classes of a pair have the same parts, only where they are differs.
PAIRS = (("red", "blue"), ("yellow", "green"), ("green", "magenta"), ("blue", "yellow"), ("magenta", "red"))
CLASSES: tuple[str, ...] = tuple(f"{x}-left-of-{y}" for a, b in PAIRS for x, y in ((a, b), (b, a)))


def shipped_weights(name: str) -> Path | None:
    """The weights of toy ``name`` shipped with the package, or None when none ship (``cpvt_toy_gap``,
    ``deit_toy_sincos``: trained by ``scripts/train_demo.py`` on request)."""
    path = Path(str(resources.files("cpvt_eval.resources").joinpath("demo", f"{name}.safetensors")))
    return path if path.is_file() else None
