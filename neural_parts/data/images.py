"""Model input images: reading image files and the ImageNet normalisation every input goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalise_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float32, resized (bilinear, antialiased) and ImageNet-normalised."""
    if image.shape[:2] != (size, size):
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def read_image(path: str | Path, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """An image file -> (model input (1, 3, S, S) ImageNet-normalised, RGB uint8 (H, W, 3) as read).

    Transparent pixels are composited on white (the renderer's background).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"input image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if img.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    rgb = np.asarray(img.convert("RGB"))
    return normalise_image(rgb, image_size)[None], rgb
