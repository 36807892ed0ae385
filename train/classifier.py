"""Train the evaluation classifier (>= 99% MNIST test accuracy): python -m train.classifier"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion.metrics import Classifier, classify
from train.common import finish, setup
from train.loop import TrainConfig, parse_config, train_loop


@dataclass
class ClassifierConfig(TrainConfig):
    out: str = "runs/classifier"
    weights_dir: str = "weights/classifier"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.998
    max_shift: int = 2                # random translation augmentation, in pixels


class ClassifierTask:
    def __init__(self, max_shift: int):
        self.max_shift = max_shift

    def noise(self, x, y, g):
        return {"shift": torch.randint(-self.max_shift, self.max_shift + 1, (x.shape[0], 2), generator=g)}

    def loss(self, model, x, y, noise):
        shifted = torch.stack([torch.roll(img, tuple(s.tolist()), dims=(-2, -1)) for img, s in zip(x, noise["shift"])])
        loss = F.cross_entropy(model(shifted), y, label_smoothing=0.05)
        return loss, {}


def main(argv=None):
    cfg = parse_config(ClassifierConfig, argv)
    rank, world, device, (x_train, y_train) = setup(cfg)
    model = Classifier()
    ema, _ = train_loop(cfg, model, ClassifierTask(cfg.max_shift), x_train, y_train, device=device, rank=rank, world=world)
    if rank == 0:
        from train.data import load_mnist
        x_test, y_test = load_mnist("test", cfg.mnist_dir or None)
        preds, _ = classify(ema.cpu(), x_test)
        acc = float((preds == y_test).float().mean())
        print(f"test accuracy {acc:.4f}")
        finish(cfg, ema.cpu(), {"test_accuracy": acc})


if __name__ == "__main__":
    main()
