"""Data: procedural and real meshes -> HDF5 training records; loaders; the headless renderer.

Build with ``python -m neural_parts.prepare`` (or ``prepare_synthetic``); load with ``NeuralPartsDataset``.
"""

from .build import default_data_dir
from .dataset import NeuralPartsDataset
from .render import Camera, distinct_colours, orbit_camera, render_meshes
from .sources import prepare_humans, prepare_synthetic
from .storage import CorruptFileError, H5Records
from .synthetic import GENERATOR_VERSION

SYNTHETIC_NAME = f"synthetic-v{GENERATOR_VERSION}"

__all__ = [
    "SYNTHETIC_NAME",
    "Camera",
    "CorruptFileError",
    "H5Records",
    "NeuralPartsDataset",
    "default_data_dir",
    "distinct_colours",
    "orbit_camera",
    "prepare_humans",
    "prepare_synthetic",
    "render_meshes",
]
