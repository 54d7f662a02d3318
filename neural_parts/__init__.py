"""Neural Parts: single-image 3D reconstruction as a union of expressive primitives.

Importing this package compiles nothing and touches no GPU. Entry points:
``python -m neural_parts.train | evaluate | reconstruct | fit | prepare``.
"""
__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """Load a trained model from a run folder or checkpoint file (see ``neural_parts.api.load``)."""
    from .api import load as _load

    return _load(checkpoint, device)
