"""Neural Parts: single-image 3D reconstruction as a union of expressive primitives.

Importing this package compiles nothing and touches no GPU. Entry points:
``python -m neural_parts.train | evaluate | reconstruct | fit | prepare``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neural_parts")  # the one version: setup.py's
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"


def load(checkpoint, device="cpu"):
    """Load a trained model from a run folder or checkpoint file (see ``neural_parts.checkpoint.load_model``)."""
    from .checkpoint import load_model

    return load_model(checkpoint, device)
