"""A dense size range (10 sizes, 56:128:8 on the toys, as 224:512:32 is at patch 16) against 4 sizes on the same
images: wall time of the shared-data sweep, 3 interleaved rounds, ratio per round."""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cpvt_eval
from cpvt_eval.data import open_dataset
from cpvt_eval.engine import EvalSettings, sweep
from cpvt_eval.jobs.assemble import build_model
from tests.conftest import make_imagefolder

root = Path("/tmp/bench_range/val")
root.parent.mkdir(parents=True, exist_ok=True)
if not root.exists():
    make_imagefolder(root, tuple(range(10)), per_class=6, size=(500, 375))
ims = open_dataset(root)
models = []
for n in ("cpvt_toy", "deit_toy"):
    torch.manual_seed(0)
    p = Path(f"/tmp/bench_range/{n}.pth")
    torch.save({"model": cpvt_eval.create_model(n, num_classes=1000).state_dict()}, p)
    models.append(build_model(n, str(p), {"num_classes": 1000}))
st = EvalSettings(device=torch.device("cpu"), batch_size=32, workers=2)
four = (56, 96, 112, 128)
ten = tuple(range(56, 129, 8))
t = {4: [], 10: []}
for r in range(3):
    for k, sizes in ((4, four), (10, ten)):
        t0 = time.perf_counter()
        list(sweep(models, ims, sizes, st))
        t[k].append(time.perf_counter() - t0)
ratios = [b / a for a, b in zip(t[4], t[10])]
print("4 sizes s:", [round(x, 2) for x in t[4]], "10 sizes s:", [round(x, 2) for x in t[10]])
print("ratio 10/4 median", round(statistics.median(ratios), 2), "range", round(min(ratios), 2), round(max(ratios), 2))
