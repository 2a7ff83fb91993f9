"""The parity table of transformers checkpoints: per family, key layout and size, the largest |logit difference|
between the tool's module and transformers' own forward (``interpolate_pos_encoding=True`` off the native size).

Needs transformers (a test-only dependency); the toy models are those of ``tests/hf_toys.py``: random weights,
image 32, patch 8 (Swin: patch 4, window 4, depths 2-2), hidden 32 (Swin 16), 2 layers, 3 classes.

    python scripts/transformers_parity.py [--sizes 32 48 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=UserWarning)  # timm's table resampling warns about tensor layouts
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from hf_toys import FAMILIES, logits, make, save  # noqa: E402

from cpvt_eval.config import PEOptions  # noqa: E402
from cpvt_eval.jobs.assemble import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    args = parser.parse_args()
    print("| family | layout | size | policy | max abs logit diff |")
    print("|---|---|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, family in enumerate(FAMILIES):
            for layout in ("4x", "5x"):
                folder = save(make(family, seed=i), Path(tmp) / f"{family}-{layout}", layout, family)
                m = build_model(str(folder))
                for size in args.sizes:
                    hf = make(family, seed=i)  # a fresh model: transformers' Swin keeps state from earlier inputs
                    module, policy = m.sizer.module_at(size, PEOptions())
                    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(size))
                    with torch.no_grad():
                        diff = (module(x) - logits(hf, x, interpolate=size != 32 and "swin" not in family)).abs().max()
                    print(f"| {family} | {layout} | {size} | {policy} | {diff.item():.2e} |")


if __name__ == "__main__":
    main()
