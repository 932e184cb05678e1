"""Models: the zoo (registered in `registry.MODELS` on import), the YAML `sequential` builder,
torchvision and user classes, weight initialisation, the dry-run shape check and the summary."""

from trainlab.models import rnn, zoo  # noqa: F401  (registers the zoo)
from trainlab.models.build import build_model
from trainlab.models.init import apply_init
from trainlab.models.shapes import check_shapes, model_summary

__all__ = ["build_model", "check_shapes", "model_summary", "apply_init"]
