"""Train the second evaluation network, independent of weights/classifier in architecture, data and augmentation:
    python -m train.classifier_resnet

Data: the second half of the 60k training images (index 30000 on, in the loader's fixed order); the first
classifier saw all 60k, the score models too, so this one shares half its data with them and none of its design.
Augmentation: a random affine warp per image (rotation +-12 degrees, scale 0.9-1.1, shift +-2 px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion.metrics import ResNetClassifier, classify
from train.common import finish, setup
from train.loop import TrainConfig, parse_config, train_loop


@dataclass
class ResNetClassifierConfig(TrainConfig):
    out: str = "runs/classifier-resnet"
    weights_dir: str = "weights/classifier-resnet"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    ema_decay: float = 0.998
    first_index: int = 30000          # train on images [first_index:] of the 60k
    max_rotation: float = 12.0        # degrees
    max_scale: float = 0.1
    max_shift: float = 2.0            # pixels
    width: int = 24


class AffineTask:
    def __init__(self, cfg: ResNetClassifierConfig):
        self.cfg = cfg

    def noise(self, x, y, g):
        b = x.shape[0]
        u = torch.rand(b, 4, generator=g) * 2 - 1   # (B, 4) in [-1, 1]: rotation, scale, shift x, shift y
        return {"affine": u}

    def loss(self, model, x, y, noise):
        c, u = self.cfg, noise["affine"]
        angle = u[:, 0] * math.radians(c.max_rotation)
        scale = 1 + u[:, 1] * c.max_scale
        shift = u[:, 2:] * (2 * c.max_shift / x.shape[-1])   # pixels -> normalised [-1, 1] coordinates
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
        return F.cross_entropy(model(warped), y, label_smoothing=0.05), {}


def main(argv=None):
    cfg = parse_config(ResNetClassifierConfig, argv)
    rank, world, device, (x_train, y_train) = setup(cfg)
    x_train, y_train = x_train[cfg.first_index:], y_train[cfg.first_index:]
    model = ResNetClassifier(width=cfg.width)
    ema, _ = train_loop(cfg, model, AffineTask(cfg), x_train, y_train, device=device, rank=rank, world=world)
    if rank == 0:
        from train.data import load_mnist
        x_test, y_test = load_mnist("test", cfg.mnist_dir or None)
        preds, _ = classify(ema.cpu(), x_test)
        acc = float((preds == y_test).float().mean())
        print(f"test accuracy {acc:.4f}")
        finish(cfg, ema.cpu(), {"test_accuracy": acc, "train_images": len(x_train)})


if __name__ == "__main__":
    main()
