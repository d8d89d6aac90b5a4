"""Models: a registry of builders and self-describing checkpoints."""

from wbc_ray.models import baselines, efficientnet, paper_cnn  # noqa: F401  (register the builders)
from wbc_ray.models.registry import ModelSpec, build_model, get_spec, list_models

__all__ = ["ModelSpec", "build_model", "get_spec", "list_models"]
