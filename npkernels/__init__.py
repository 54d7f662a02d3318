"""npkernels: fused kernels for Neural Parts, usable on their own.

Public ops (each with a pure-PyTorch reference that is also the CPU path):
``coupling_forward``, ``coupling_inverse``, ``implicit_union``, ``knn`` (its result's ``.chamfer``),
``nearest``, ``chamfer``, ``safe_sqrt``, ``inside_mesh``, ``inside_mesh_batch``; ``accelerate(model)`` / ``restore(model)`` swap the fused
kernels into an existing model. Importing this package compiles nothing and needs no GPU.
"""
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._dispatch import backend_info
from .coupling import Affine, CouplingWeights, coupling_forward, coupling_inverse
from .implicit import UnionImplicit, implicit_union
from .inside_mesh import inside_mesh, inside_mesh_batch
from .knn import KNN, chamfer, knn, nearest, safe_sqrt
from .patch import accelerate, restore

try:
    __version__ = _version("neural_parts")  # npkernels ships in the neural_parts distribution: one version
except _PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
__all__ = [
    "Affine", "CouplingWeights", "KNN", "UnionImplicit", "accelerate", "backend_info", "chamfer",
    "coupling_forward", "coupling_inverse", "implicit_union", "inside_mesh", "inside_mesh_batch", "knn", "nearest",
    "restore", "safe_sqrt",
]
