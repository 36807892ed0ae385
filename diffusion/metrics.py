"""Evaluation: two independent MNIST classifiers and the metrics computed in each one's feature space.

- Frechet distance on penultimate features (the FID recipe of Heusel et al. 2017 with an MNIST classifier in place
  of Inception, so figures compare only within this project), always beside the same-N real floor (FD is biased
  upward at small N);
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic kernel k(a, b) = (a.b / d + 1)^3, mean +- std over
  random subsets, unbiased so figures at different N compare;
- precision and recall on k-NN manifolds (Kynkaanniemi et al. 2019, k = 3);
- conditional accuracy per digit; the *confident* rate (both classifiers agree with probability >= 0.9);
- the *speck* rate (`speck_mask`: an image holding an isolated bright blob away from the digit).
Two networks of different design (`Classifier`: a plain conv stack; `ResNetClassifier`: a pre-activation ResNet
trained on other data with other augmentation) make a figure that flatters one feature space visible in the other.
"""
from __future__ import annotations

import numpy as np
import torch
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


@torch.inference_mode()
def predict(classifier: nn.Module, images: torch.Tensor, batch_size: int = 1000):
    """images (N, 1, 28, 28) in [0, 1] -> (probabilities (N, 10), features (N, F)) as CPU float tensors."""
    classifier.eval()
    device = next(classifier.parameters()).device
    probs, feats = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk.to(device, torch.float32))
        feats.append(f.float().cpu())
        probs.append(torch.softmax(classifier.head(f).float(), dim=1).cpu())
    return torch.cat(probs), torch.cat(feats)


def kid(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance, (mean, std) over `subsets` random subsets of min(subset_size, N) of each set.

    Per subset, with m samples x from A and y from B and k(a, b) = (a.b / d + 1)^3:
        MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (m (m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2
    (unbiased: its expectation is the population MMD^2, 0 for equal distributions, so it can be slightly negative)."""
    a, b = features_a.double(), features_b.double()
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        values.append(float((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off
                            - 2 * kxy.mean()))
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if subsets > 1 else 0.0


def _knn_radii(features: torch.Tensor, k: int, chunk: int = 2000) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for part in features.split(chunk):
        dist = torch.cdist(part, features)                   # (chunk, N)
        radii.append(dist.kthvalue(k + 1, dim=1).values)    # +1: the point itself at distance 0
    return torch.cat(radii)


def _covered(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """(Q,) bool: query inside at least one support point's k-NN ball."""
    out = []
    for part in queries.split(chunk):
        out.append((torch.cdist(part, support) <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the real (fake) manifold is the union of balls
    reaching each real (fake) point's k-th nearest neighbour; precision = share of fake samples on the real manifold,
    recall = share of real samples on the fake manifold. Use sets of equal size."""
    real, fake = real.double(), fake.double()
    precision = _covered(fake, real, _knn_radii(real, k)).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def confident_rate(probs_a: torch.Tensor, probs_b: torch.Tensor, threshold: float = 0.9) -> float:
    """Share of images both classifiers put in the same class with probability >= threshold."""
    pa, ca = probs_a.max(dim=1)
    pb, cb = probs_b.max(dim=1)
    return float(((pa >= threshold) & (pb >= threshold) & (ca == cb)).double().mean())


SPECK_THRESHOLD = 0.5   # a pixel is "ink" at >= 0.5 of full brightness
SPECK_MAX_AREA = 2      # a speck is an ink blob of at most this many pixels...
SPECK_MIN_GAP = 3       # ...at least this many pixels (Chebyshev) from the largest blob (the digit): 2+ background pixels between


def speck_mask(images: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the image holds a speck. Definition (exact): binarise at SPECK_THRESHOLD; take 8-connected
    components; a speck is a component of <= SPECK_MAX_AREA pixels whose every pixel lies >= SPECK_MIN_GAP pixels
    (Chebyshev distance) from the largest component. A broken stroke next to the digit is therefore not a speck;
    a lone bright dot on the black background is."""
    from scipy import ndimage
    imgs = images.reshape(len(images), *images.shape[-2:]).float().cpu().numpy()
    out = np.zeros(len(imgs), dtype=bool)
    eight = np.ones((3, 3), dtype=bool)
    for n, img in enumerate(imgs):
        ink = img >= SPECK_THRESHOLD
        labels, count = ndimage.label(ink, structure=eight)
        if count < 2:
            continue
        areas = np.bincount(labels.ravel())[1:]
        digit = labels == (np.argmax(areas) + 1)
        near_digit = ndimage.binary_dilation(digit, structure=eight, iterations=SPECK_MIN_GAP - 1)
        for c in np.flatnonzero(areas <= SPECK_MAX_AREA) + 1:
            blob = labels == c
            if not (blob & near_digit).any():
                out[n] = True
                break
    return torch.from_numpy(out)


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


class Evaluator:
    """Both classifiers and the real reference sets, computed once; `evaluate(images, labels)` -> metrics.

    real (N, 1, 28, 28): the reference digits (the test set); floor_images: other real digits (training images) whose
    distance to `real` at the same N is the floor every Frechet distance is read against."""

    def __init__(self, classifiers: dict, real: torch.Tensor, real_labels: torch.Tensor, floor_images: torch.Tensor):
        self.classifiers = classifiers
        self.real, self.real_labels, self.floor_images = real, real_labels, floor_images
        self._real = {name: predict(c, real) for name, c in classifiers.items()}           # probs, feats
        self._real_stats = {name: feature_stats(f) for name, (_, f) in self._real.items()}
        self._floor = {name: predict(c, floor_images)[1] for name, c in classifiers.items()}
        self._floor_cache: dict = {}

    def floor(self, name: str, n: int) -> float:
        """FD of n real training digits against the reference set in classifier `name`'s features."""
        if (name, n) not in self._floor_cache:
            self._floor_cache[(name, n)] = frechet_distance(*feature_stats(self._floor[name][:n]), *self._real_stats[name])
        return self._floor_cache[(name, n)]

    def real_rates(self) -> dict:
        """The confident and speck rates of the real reference digits, to read the samples' rates against."""
        probs = [p for p, _ in self._real.values()]
        return {"confident_rate": confident_rate(*probs[:2]) if len(probs) > 1 else float("nan"),
                "speck_rate": float(speck_mask(self.real).double().mean())}

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None, kid_subsets: int = 50) -> dict:
        """images (N, 1, 28, 28) in [0, 1]; labels (N,) the requested digits, or None / all -1 for unconditional."""
        images = images.reshape(len(images), 1, *images.shape[-2:]).float()
        n = len(images)
        conditional = labels is not None and bool((labels >= 0).all())
        out: dict = {"samples": n, "evaluators": {}}
        probs_all = []
        for name, clf in self.classifiers.items():
            probs, feats = predict(clf, images)
            probs_all.append(probs)
            real_feats = self._real[name][1]
            m = {"frechet_distance": frechet_distance(*feature_stats(feats), *self._real_stats[name]),
                 "frechet_floor_same_n": self.floor(name, n)}
            m["frechet_ratio"] = m["frechet_distance"] / m["frechet_floor_same_n"]
            m["kid_mean"], m["kid_std"] = kid(feats, real_feats, subsets=kid_subsets)
            m["precision"], m["recall"] = precision_recall(real_feats[:n], feats)
            pred = probs.argmax(1)
            if conditional:
                m["conditional_accuracy"], m["per_digit_accuracy"] = conditional_accuracy(pred, labels)
            m["class_histogram"] = class_histogram(pred)
            out["evaluators"][name] = m
        if len(probs_all) > 1:
            out["confident_rate"] = confident_rate(*probs_all[:2])
        out["speck_rate"] = float(speck_mask(images).double().mean())
        return out


def worst_ratio(metrics: dict, key: str = "frechet_ratio") -> float:
    """The worse (larger) of the evaluators' figures for `key`: the number a setting is judged by."""
    return max(m[key] for m in metrics["evaluators"].values())


def min_accuracy(metrics: dict) -> float:
    """The lower of the evaluators' conditional accuracies (nan for an unconditional model)."""
    acc = [m.get("conditional_accuracy", float("nan")) for m in metrics["evaluators"].values()]
    return min(acc)


# Real MNIST test digits' speck rate under `speck_mask` (bench/results/real_rates.json, Evaluator.real_rates), and
# how far above it a default may go: the issue's target, "within 1 point of real digits'".
REAL_SPECK_RATE = 0.0069
SPECK_MARGIN = 0.01


def choose_setting(rows: list[dict], min_acc: float = 0.99, max_speck: float = REAL_SPECK_RATE + SPECK_MARGIN) -> dict:
    """The project's rule for sampling defaults, over rows {"setting": ..., "metrics": Evaluator output}:
    1. the lower conditional accuracy of the two evaluators is >= min_acc (unconditional rows: no constraint);
    2. among those, only rows whose speck rate is <= max_speck, where any row reaches it (otherwise step 2 is skipped:
       a model that specks at every setting still gets its best-FD default);
    3. the lowest worse-of-two Frechet ratio (FD / same-N real floor, in both feature spaces).
    Ties: the first row (order rows cheapest first). A row without a speck rate counts as clean."""
    ok = [r for r in rows if not (min_accuracy(r["metrics"]) < min_acc)]  # nan (unconditional) passes
    if not ok:
        raise ValueError(f"no setting reaches conditional accuracy {min_acc:.3f} in both evaluators")
    clean = [r for r in ok if not (r["metrics"].get("speck_rate", float("nan")) > max_speck)]
    return min(clean or ok, key=lambda r: worst_ratio(r["metrics"]))
