"""Model components: encoder, conditional invertible network, the Neural Parts model."""
from .authors_weights import load_authors_state_dict
from .encoders import FrozenBatchNorm2d, ResNet18
from .invertible import ConditionalNVP, CouplingLayer, ProjectionLayer
from .neural_parts import NeuralParts
from .primitives import Primitives

__all__ = ["ConditionalNVP", "CouplingLayer", "FrozenBatchNorm2d", "NeuralParts", "Primitives",
           "ProjectionLayer", "ResNet18", "load_authors_state_dict"]
