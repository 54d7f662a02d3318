"""The Neural Parts model: image -> per-primitive conditions -> primitives."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .atlasnet import AtlasNetSphere
from .encoders import ResNet18
from .invertible import ConditionalNVP
from .primitives import Primitives


class LatentEncoder(nn.Module):
    """One learned feature per shape (for fitting without images): indices (B,) -> (B, F)."""

    def __init__(self, n_shapes: int, feature_size: int):
        super().__init__()
        self.feature_size = feature_size
        self.codes = nn.Embedding(n_shapes, feature_size)
        nn.init.normal_(self.codes.weight, std=0.01)

    def forward(self, index: Tensor) -> Tensor:
        return self.codes(index)


class NeuralParts(nn.Module):
    """Neural Parts (Paschalidou et al., CVPR 2021).

    Args:
        n_primitives: M. feature_size: F (the condition is [image feature, embedding_m], 2F).
        hidden_size, proj_dims, n_layers: the coupling stack (256, 128, 4 in the paper).
        proj_init_gain: scale of the projection's first-layer initial weights (1: PyTorch's default).
        radius: sphere radius r. encoder: "resnet18" or "latent" (needs ``n_shapes``).
        freeze_bn: BatchNorm uses running statistics only (the authors' setting for pretrained trunks).
        width: channels of the ResNet-18's first stage (64 = torchvision's; smaller is cheaper).
        normalize, explicit_affine: the sigma scale head and the rigid (quaternion, translation) heads.
        network: "simple_nvp" (the conditional invertible network) or "atlasnet" (the authors'
            AtlasNet-sphere ablation: an MLP without inverse, see models/atlasnet.py).
    """

    def __init__(self, n_primitives: int = 5, feature_size: int = 256, hidden_size: int = 256,
                 proj_dims: int = 128, n_layers: int = 4, radius: float = 0.25, encoder: str = "resnet18",
                 freeze_bn: bool = True, normalize: bool = True, explicit_affine: bool = True,
                 n_shapes: int | None = None, network: str = "simple_nvp", width: int = 64,
                 proj_init_gain: float = 1.0):
        super().__init__()
        if n_primitives < 1:
            raise ValueError(f"n_primitives must be >= 1, got {n_primitives}")
        self.radius = radius
        self.n_primitives = n_primitives
        self.amp_encoder = False
        if encoder == "resnet18":
            self.feature_extractor = ResNet18(feature_size, freeze_bn, width)
        elif encoder == "latent":
            if not n_shapes:
                raise ValueError("encoder='latent' needs n_shapes")
            self.feature_extractor = LatentEncoder(n_shapes, feature_size)
        else:
            raise ValueError(f"unknown encoder {encoder!r}; expected 'resnet18' or 'latent'")
        self.primitive_embedding = nn.Parameter(torch.randn(n_primitives, feature_size))
        if network == "simple_nvp":
            self.invertible_network = ConditionalNVP(2 * feature_size, hidden_size, proj_dims, n_layers,
                                                     normalize, explicit_affine, proj_init_gain)
        elif network == "atlasnet":
            self.invertible_network = AtlasNetSphere(2 * feature_size, radius)
        else:
            raise ValueError(f"unknown network {network!r}; expected 'simple_nvp' or 'atlasnet'")

    @classmethod
    def from_config(cls, cfg, n_shapes: int | None = None) -> NeuralParts:
        """A model with random weights from a ``config.Config`` (``n_shapes`` for the latent encoder)."""
        fe, inn = cfg.feature_extractor, cfg.invertible_network
        model = cls(n_primitives=cfg.network.n_primitives, feature_size=fe.feature_size,
                    hidden_size=inn.hidden_size, proj_dims=cfg.projection_layer.proj_dims, n_layers=inn.n_blocks,
                    radius=cfg.network.sphere_radius, encoder=fe.type, freeze_bn=fe.freeze_bn, width=fe.width,
                    normalize=inn.normalize, explicit_affine=inn.explicit_affine, n_shapes=n_shapes,
                    network=inn.type, proj_init_gain=cfg.projection_layer.init_gain)
        model.kernel_backend = cfg.runtime.kernel_backend
        model.amp_encoder = cfg.runtime.amp_encoder
        return model

    @property
    def kernel_backend(self) -> str:
        return self.invertible_network.kernel_backend

    @kernel_backend.setter
    def kernel_backend(self, value: str) -> None:
        self.invertible_network.kernel_backend = value

    def inputs(self, batch: dict) -> Tensor:
        """What ``forward`` takes from a data batch: images (B, 3, H, W), or shape indices (B,) (latent)."""
        return batch["index"] if isinstance(self.feature_extractor, LatentEncoder) else batch["image"]

    def conditions(self, features: Tensor) -> Tensor:
        """C_m = [feature, embedding_m]: features (B, F) -> (B, M, 2F)."""
        B = features.shape[0]
        emb = self.primitive_embedding[None].expand(B, -1, -1)
        return torch.cat([features[:, None].expand(-1, self.n_primitives, -1), emb], dim=-1)

    def forward(self, inputs: Tensor) -> Primitives:
        """inputs: images (B, 3, H, W) ImageNet-normalised, or shape indices (B,) for the latent encoder.

        With ``amp_encoder`` (CUDA inputs only) the image encoder runs under bf16 autocast; the
        invertible network always runs in the parameters' dtype.
        """
        use_amp = self.amp_encoder and inputs.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
            features = self.feature_extractor(inputs)
        cond = self.conditions(features.to(self.primitive_embedding.dtype))
        return Primitives(cond, self.invertible_network.affine(cond), self.invertible_network, self.radius)

    @torch.no_grad()
    def predict(self, inputs: Tensor) -> Primitives:
        """Evaluation-mode prediction without autograd."""
        was_training = self.training
        self.eval()
        try:
            return self(inputs)
        finally:
            self.train(was_training)
