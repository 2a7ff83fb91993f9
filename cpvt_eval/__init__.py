"""cpvt-eval: how vision transformers behave when the input resolution changes without fine-tuning.

Public API::

    import cpvt_eval
    model = cpvt_eval.create_model("cpvt_ti")          # also registered with timm
    cpvt_eval.list_models()
    outcome = cpvt_eval.evaluate(cpvt_eval.RunConfig(models=("cpvt_ti",), sizes=(224, 384), data=..., out=...,
                                                     checkpoints={"cpvt_ti": "cpvt_ti.pth"}))
    cpvt_eval.measure_throughput(model, 224, torch.device("cpu"))
"""

__version__ = "0.1.0"

from .config import RunConfig, ThroughputConfig  # noqa: E402
from .models import ModelSpec, resolve  # noqa: E402
from .runner import build_model, run_resolution  # noqa: E402
from .throughput import count_flops, measure_throughput  # noqa: E402

evaluate = run_resolution


def create_model(name: str, **kwargs):
    """Build a registered (or timm) model by name or alias, with random weights."""
    return resolve(name).create(**kwargs)


def list_models(include_demo: bool = True) -> list[str]:
    """Names of the registered models."""
    from .models import list_specs

    return [s.name for s in list_specs(include_demo)]


__all__ = [
    "ModelSpec",
    "RunConfig",
    "ThroughputConfig",
    "__version__",
    "build_model",
    "count_flops",
    "create_model",
    "evaluate",
    "list_models",
    "measure_throughput",
    "resolve",
    "run_resolution",
]
