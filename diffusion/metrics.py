"""Evaluation: the project's MNIST classifier, conditional accuracy, and a Frechet distance on the
classifier's penultimate features (the FID recipe of Heusel et al. 2017 with an MNIST classifier in
place of Inception, so figures are comparable only within this project)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from .hub_mixin import SafeHubMixin


class Classifier(nn.Module, SafeHubMixin, library_name="mnist-diffusion-lab", tags=["mnist", "classifier"]):
    """(B, 1, 28, 28) in [0, 1] -> logits (B, 10); `features` gives the (B, feature_dim) penultimate layer."""

    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),            # 14
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # 7
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * 49, feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.inference_mode()
def classify(classifier: Classifier, images: torch.Tensor, batch_size: int = 1000):
    """images (N, 1, 28, 28) in [0, 1] -> (predictions (N,), features (N, F)) as CPU tensors."""
    classifier.eval()
    device = next(classifier.parameters()).device
    preds, feats = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk.to(device, torch.float32))
        feats.append(f.cpu())
        preds.append(classifier.head(f).argmax(1).cpu())
    return torch.cat(preds), torch.cat(feats)


def feature_stats(features: torch.Tensor):
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))."""
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise as in the reference FID code
        off = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def conditional_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = 10):
    """Overall and per-class fraction of samples classified as the digit they were asked for."""
    correct = (predictions == labels).float()
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(num_classes)]
    return float(correct.mean()), per_class


def class_histogram(predictions: torch.Tensor, num_classes: int = 10) -> list[float]:
    return (torch.bincount(predictions, minlength=num_classes).float() / len(predictions)).tolist()


class _ResBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): BN-ReLU-conv-BN-ReLU-dropout-conv + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class ResNetClassifier(nn.Module, SafeHubMixin, library_name="mnist-diffusion-lab", tags=["mnist", "classifier", "resnet"]):
    """The second, independent evaluator: a small pre-activation ResNet with global average pooling
    (28 -> 14 -> 7, widths w, 2w, 4w), unlike `Classifier` (plain conv stack, max-pool, flatten). Trained on a
    different half of the training data with affine augmentation (train/classifier_resnet.py).
    (B, 1, 28, 28) in [0, 1] -> logits (B, 10); `features` gives the (B, 4w) pooled features."""

    def __init__(self, width: int = 24, dropout: float = 0.1, num_classes: int = 10):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            _ResBlock(w, w, 1, dropout), _ResBlock(w, 2 * w, 2, dropout),       # 28 -> 14
            _ResBlock(2 * w, 2 * w, 1, dropout), _ResBlock(2 * w, 4 * w, 2, dropout),  # 14 -> 7
            nn.BatchNorm2d(4 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, 4w)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * w, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
