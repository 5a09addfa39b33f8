"""Models shared by the experiments: fast layer ops (``layers``) and, later, the autoencoders."""

from vaeaug.models import layers

__all__ = ["layers"]
