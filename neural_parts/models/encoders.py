"""Image encoder: ResNet-18 with torchvision's exact parameter names, plus a feature head.

torchvision is not a dependency: the trunk is defined here so that a user's torchvision
``resnet18`` state dict (e.g. the ImageNet weights) loads strictly into it. ``fc`` is replaced
by the authors' head Linear(512, 512) -> ReLU -> Linear(512, F).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("neural_parts")


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates them.

    Same parameters and buffers as nn.BatchNorm2d (so torchvision weights load unchanged). As in
    the authors' code the affine weight and bias stay trainable.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm: type[nn.BatchNorm2d]):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm(planes))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 trunk + head: images (B, 3, H, W) ImageNet-normalised -> features (B, F).

    ``width`` is the channel count of the first stage (64: torchvision's ResNet-18, whose weights then
    load; smaller widths scale every stage, and the head's hidden layer, by width / 64).
    """

    def __init__(self, feature_size: int = 256, freeze_bn: bool = True, width: int = 64):
        super().__init__()
        norm = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
        self.feature_size = feature_size
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (width, 2 * width, 4 * width, 8 * width)
        inplanes = width
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride, norm), BasicBlock(planes, planes, 1, norm))
            setattr(self, f"layer{i + 1}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Sequential(nn.Linear(8 * width, 8 * width), nn.ReLU(), nn.Linear(8 * width, feature_size))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def load_torchvision_weights(self, source: str | Path | dict) -> list[str]:
        """Load a torchvision ``resnet18`` state dict into the trunk, strictly; return skipped keys.

        ``fc.*`` (ImageNet classifier) is skipped and reported; any other missing or unexpected
        key raises ValueError listing them.
        """
        if isinstance(source, dict):
            state = source
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"encoder weights not found: {path}")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 (text, pickled code, truncated zip: all unusable files)
                raise ValueError(f"{path}: not a readable torch state dict ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{source}: expected a state dict of tensors (torchvision resnet18), "
                             f"got {type(state).__name__}")
        skipped = sorted(k for k in state if k.startswith("fc."))
        trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
        expected = {k for k in self.state_dict() if not k.startswith("fc.")}
        missing, unexpected = sorted(expected - trunk.keys()), sorted(trunk.keys() - expected)
        if missing or unexpected:
            raise ValueError(f"torchvision resnet18 weights do not match: missing {missing[:10]}"
                             f"{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}")
        self.load_state_dict(trunk, strict=False)
        if skipped:
            log.info("encoder: loaded torchvision trunk weights, skipped %s", ", ".join(skipped))
        return skipped
