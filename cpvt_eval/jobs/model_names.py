"""What a ``--model`` value names: a registered model, alias or timm model (``models.registry.resolve``), or a
Hugging Face transformers checkpoint: a ``save_pretrained`` folder (``config.json`` beside the weights) or
``hf-hub:org/name``. A transformers checkpoint is resolved from its ``config.json`` and ``preprocessor_config.json``
alone (``checkpoints.find_transformers``), so that its label space and sizes are checked before any weights load.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoints import find_transformers
from ..errors import ModelError
from ..models.hf_families import TransformersSpec, transformers_spec
from ..models.registry import DataConfig, ModelSpec, resolve

# The data config of transformers weights without a preprocessor_config.json: the tool's defaults, said as such.
NO_PROCESSOR = "the tool's defaults (no preprocessor_config.json)"


def display_name(text: str) -> str:
    """The name rows give a transformers checkpoint: ``hf-hub:org/name`` as typed, a folder as typed without a
    leading ``./`` or a trailing ``/``."""
    text = text.strip()
    if text.lower().startswith("hf-hub:"):
        return "hf-hub:" + text[len("hf-hub:") :].strip("/")
    return os.path.normpath(text)


def resolve_model(name: str) -> ModelSpec:
    """The spec of ``name``: a transformers checkpoint (``TransformersSpec``) or any model the registry knows."""
    name = str(name)
    repo = find_transformers(name)
    if repo is None:
        try:
            return resolve(name)
        except ModelError:
            folder = Path(name.strip())
            if folder.is_dir():
                raise ModelError(
                    f"--model {name}: the folder has no config.json; a folder given as a model is a transformers "
                    "save_pretrained folder (config.json and the weights)"
                ) from None
            raise
    found = repo.data_config()
    data = DataConfig(source=NO_PROCESSOR).updated(found) if found else DataConfig(source=NO_PROCESSOR)
    return transformers_spec(repo.config, display_name(name), repo.origin, data)


def is_transformers(spec: ModelSpec) -> bool:
    return isinstance(spec, TransformersSpec)
