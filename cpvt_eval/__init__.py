"""cpvt-eval: how vision transformers behave when the input resolution changes without fine-tuning.

Public API::

    import cpvt_eval
    model = cpvt_eval.create_model("cpvt_ti")
    import cpvt_eval.models; timm.create_model("cpvt_ti")  # importing cpvt_eval.models registers them with timm
    cpvt_eval.list_models()
    cfg = cpvt_eval.RunConfig(models=("cpvt_ti",), sizes=(224, 384), data=..., out=..., checkpoints={...})
    outcome = cpvt_eval.evaluate(cfg)  # accuracy by size: results.*
    outcome = cpvt_eval.run_probe(cfg, "shift", epochs=5)  # any registered probe by name, with its settings
    outcome = cpvt_eval.run_probes(cfg, ["resolution", "agreement"])  # several, sharing each size's pass
    cpvt_eval.measure_throughput(model, 224, torch.device("cpu"))

The names are imported on first use, so that ``import cpvt_eval`` (and ``cpvt-eval --help``) stays light: torch,
timm and pandas load only when a model, a job or a report needs them. For the same reason the models of this
package are registered with timm by ``import cpvt_eval.models`` (or any first use of a model), not by
``import cpvt_eval``.
"""

from __future__ import annotations

import importlib

# The probes register their row types with ``cpvt_eval.results`` as they are imported, so that rows read from a run
# directory are typed whoever reads them. They are imported here, with the package (light: no torch, timm or pandas),
# rather than by ``results`` on demand: the results layer never imports the probes built on it.
from .probes import PROBES as PROBES
from .version import __version__ as __version__

# the public names, by the module that defines them (imported on first use)
_MODULES = {
    "config": ("RunConfig", "ThroughputConfig", "Hooks"),
    "models.registry": ("ModelSpec", "resolve"),
    "jobs.assemble": ("build_model",),
    "jobs.run": ("evaluate", "run_probe", "run_probes"),
    "throughput": ("count_flops", "measure_throughput"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted([*_LAZY, "PROBES", "__version__", "create_model", "list_models"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def create_model(name: str, **kwargs):
    """Build a registered (or timm) model by name or alias, with random weights."""
    from .models import resolve

    return resolve(name).create(**kwargs)


def list_models(include_demo: bool = True) -> list[str]:
    """Names of the registered models."""
    from .models import list_specs

    return [s.name for s in list_specs(include_demo)]
