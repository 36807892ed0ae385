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

Views that are not classifiers (`PixelPCA`: raw pixels on training digits' principal axes; any other embedding, e.g.
the autoencoder's latents) get the same FD / precision / recall, and `pixel_stats` reads the pixels themselves: share
of ink, share of mid-tones, stroke widths from a Euclidean distance transform, against the whole test set.
Every figure is read against *real digits' own figure at the same N* (`Evaluator.real_figures`: mean and spread over
disjoint real subsets). The rules that read these figures to choose sampling defaults live in
diffusion/setting_rules.py.
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


# --- a view that is not a classifier: principal axes of raw pixels, and the pixels' own statistics ---

INK_THRESHOLD = 0.5            # a pixel is ink at >= half brightness (as SPECK_THRESHOLD)
MIDTONE_RANGE = (0.25, 0.75)   # a mid-tone pixel, lo <= v < hi: neither background nor ink (blur, grain, antialiasing)


class PixelPCA:
    """Raw pixels on the top `components` principal axes of training digits: a feature space no classifier chose.
    Fit: X (M, 784) with mean mu, X - mu = U S V^T; features(x) = (x - mu) V[:k]^T, (N, k)."""

    def __init__(self, train_images: torch.Tensor, components: int = 64):
        x = train_images.reshape(len(train_images), -1).double()
        if not 1 <= components <= min(x.shape):
            raise ValueError(f"components must be in [1, {min(x.shape)}] for {len(x)} images, got {components}")
        self.mean = x.mean(0)
        self.axes = torch.linalg.svd(x - self.mean, full_matrices=False).Vh[:components]   # (k, 784), orthonormal

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.reshape(len(images), -1).double() - self.mean) @ self.axes.T).float()


def stroke_widths(image) -> np.ndarray:
    """Stroke widths in pixels along the ridge of one (28, 28) image. Binarise at INK_THRESHOLD (the border counts as
    background); d = Euclidean distance from an ink pixel's centre to the nearest background pixel's centre (1 on a
    stroke's edge); a ridge pixel is an ink pixel whose d is the maximum of its 3x3 neighbourhood; its width is 2d - 1.
    Exact for a straight stroke of odd width w (its centre line has d = (w + 1) / 2); an even width w reads w - 1."""
    from scipy import ndimage
    ink = np.pad(np.asarray(image) >= INK_THRESHOLD, 1)
    d = ndimage.distance_transform_edt(ink)
    ridge = ink & (d >= ndimage.maximum_filter(d, size=3, mode="constant"))
    return 2 * d[ridge] - 1


def pixel_summary(images: torch.Tensor) -> dict:
    """Per image: ink share (N,), mid-tone share (N,); and every image's ridge stroke widths pooled (M,)."""
    imgs = images.reshape(len(images), -1).float().cpu().numpy()
    lo, hi = MIDTONE_RANGE
    widths = [stroke_widths(img.reshape(28, 28)) for img in imgs]
    return {"ink": (imgs >= INK_THRESHOLD).mean(1), "midtone": ((imgs >= lo) & (imgs < hi)).mean(1),
            "widths": np.concatenate(widths) if widths else np.zeros(0)}


def pixel_stats(summary: dict, reference: dict) -> dict:
    """Figures of a pixel_summary, and its distance to `reference` (the whole test set's pixel_summary):
    ink and mid-tone shares (mean over images), mean ridge stroke width, and the Wasserstein-1 distance (pixels)
    between the pooled stroke-width distributions. Images with no ink at all have no ridge: they read as strokes of
    width 0 (then W1 = the reference's mean width, the distance from a point mass at 0), not as an error."""
    from scipy.stats import wasserstein_distance
    widths = summary["widths"] if len(summary["widths"]) else np.zeros(1)
    return {"ink_share": float(summary["ink"].mean()), "midtone_share": float(summary["midtone"].mean()),
            "stroke_width_mean": float(widths.mean()),
            "stroke_width_w1": float(wasserstein_distance(widths, reference["widths"]))}


# --- real digits as the yardstick ---

TOLERANCE_SDS = 2.0   # a figure is "as real digits'" within this many real-vs-real standard deviations at the same N


def spread(values, n: int | None = None) -> dict:
    """Mean, sd and tolerance of one figure over disjoint real subsets. For a proportion over n images (give n), the sd
    is at least the binomial sqrt(p (1 - p) / n), so a few lucky subsets cannot make the tolerance vanish;
    tolerance = TOLERANCE_SDS * sd."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        raise ValueError(f"a spread needs at least 2 real subsets, got {len(v)}")
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    if n is not None:
        sd = max(sd, float(np.sqrt(mean * (1 - mean) / n)))
    return {"mean": mean, "sd": sd, "tolerance": TOLERANCE_SDS * sd, "subsets": len(v)}


class Evaluator:
    """Both classifiers, the other views and the real reference sets, computed once; `evaluate(images, labels)` ->
    metrics, with real digits' own figures at the same N under "real".

    real (N, 1, 28, 28): the reference digits (the test set, held out from every evaluator's training); floor_images:
    other real digits (training images) whose distance to `real` at the same N is the floor every Frechet distance is
    read against; views: name -> callable (B, 1, 28, 28) -> (B, F) features no classifier chose (PixelPCA, the
    autoencoder's latents); real_subsets: how many disjoint real subsets give each real figure's spread."""

    def __init__(self, classifiers: dict, real: torch.Tensor, real_labels: torch.Tensor, floor_images: torch.Tensor,
                 views: dict | None = None, real_subsets: int = 5):
        self.classifiers, self.views = classifiers, dict(views or {})
        self.real, self.real_labels, self.floor_images = real, real_labels, floor_images
        self.real_subsets = real_subsets
        self._real = {name: predict(c, real) for name, c in classifiers.items()}           # probs, feats
        self._real_feats = {**{name: f for name, (_, f) in self._real.items()},
                            **{name: view(real).float() for name, view in self.views.items()}}
        self._real_stats = {name: feature_stats(f) for name, f in self._real_feats.items()}
        self._floor = {**{name: predict(c, floor_images)[1] for name, c in classifiers.items()},
                       **{name: view(floor_images).float() for name, view in self.views.items()}}
        self._real_speck = speck_mask(real)
        self._real_pixels = pixel_summary(real)
        self._floor_cache: dict = {}
        self._figures_cache: dict = {}

    def floor(self, name: str, n: int) -> float:
        """FD of n real training digits against the reference set in feature space `name`."""
        if (name, n) not in self._floor_cache:
            self._floor_cache[(name, n)] = frechet_distance(*feature_stats(self._floor[name][:n]), *self._real_stats[name])
        return self._floor_cache[(name, n)]

    def real_rates(self) -> dict:
        """The confident and speck rates of the real reference digits, to read the samples' rates against."""
        probs = [p for p, _ in self._real.values()]
        return {"confident_rate": confident_rate(*probs[:2]) if len(probs) > 1 else float("nan"),
                "speck_rate": float(self._real_speck.double().mean())}

    def real_figures(self, n: int) -> dict:
        """Real digits' own figures at N = n, each as `spread` (mean, sd, tolerance) over k disjoint subsets:
        accuracy, confident and speck rates on held-out test digits (k subsets of n); FD against the test set,
        precision / recall against its first n, and pixel statistics against all of it, on training digits (k subsets
        of n from floor_images). k = min(real_subsets, how many disjoint subsets of n each set holds), at least 2."""
        if n in self._figures_cache:
            return self._figures_cache[n]
        k = min(self.real_subsets, len(self.real) // n, len(self.floor_images) // n)
        if k < 2:
            raise ValueError(f"real figures at N = {n} need 2 disjoint subsets of n: the reference holds {len(self.real)} "
                             f"and the floor set {len(self.floor_images)} images")
        held_out = [slice(i * n, (i + 1) * n) for i in range(k)]   # test digits: classified by networks never trained on them
        floors = held_out                                          # training digits (floor_images), same cut
        out: dict = {"samples": n, "subsets": k, "evaluators": {}, "views": {}}
        for name in self._real_feats:
            fd = [frechet_distance(*feature_stats(self._floor[name][s]), *self._real_stats[name]) for s in floors]
            pr = [precision_recall(self._real_feats[name][:n], self._floor[name][s]) for s in floors]
            m = {"frechet_distance": spread(fd), "precision": spread([p for p, _ in pr], n),
                 "recall": spread([r for _, r in pr], n)}
            if name in self._real:
                probs = self._real[name][0]
                m["conditional_accuracy"] = spread([float((probs[s].argmax(1) == self.real_labels[s]).double().mean())
                                                    for s in held_out], n)
                out["evaluators"][name] = m
            else:
                out["views"][name] = m
        probs = [p for p, _ in self._real.values()]
        if len(probs) > 1:
            out["confident_rate"] = spread([confident_rate(probs[0][s], probs[1][s]) for s in held_out], n)
        out["speck_rate"] = spread([float(self._real_speck[s].double().mean()) for s in held_out], n)
        subsets = [pixel_stats(pixel_summary(self.floor_images[s]), self._real_pixels) for s in floors]
        out["pixel_stats"] = {key: spread([p[key] for p in subsets]) for key in subsets[0]}
        out["pixel_stats_test_set"] = pixel_stats(self._real_pixels, self._real_pixels)
        self._figures_cache[n] = out
        return out

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None = None, kid_subsets: int = 50) -> dict:
        """images (N, 1, 28, 28) in [0, 1]; labels (N,) the requested digits, or None / all -1 for unconditional.
        Classifiers' figures under "evaluators", the other views' under "views", real digits' own under "real"."""
        images = images.reshape(len(images), 1, *images.shape[-2:]).float()
        n = len(images)
        conditional = labels is not None and bool((labels >= 0).all())
        out: dict = {"samples": n, "evaluators": {}, "views": {}}
        probs_all = []
        spaces = [(name, clf) for name, clf in self.classifiers.items()] + [(name, None) for name in self.views]
        for name, clf in spaces:
            if clf is not None:
                probs, feats = predict(clf, images)
                probs_all.append(probs)
            else:
                feats = self.views[name](images).float()
            real_feats = self._real_feats[name]
            m = {"frechet_distance": frechet_distance(*feature_stats(feats), *self._real_stats[name]),
                 "frechet_floor_same_n": self.floor(name, n)}
            m["frechet_ratio"] = m["frechet_distance"] / m["frechet_floor_same_n"]
            m["kid_mean"], m["kid_std"] = kid(feats, real_feats, subsets=kid_subsets)
            m["precision"], m["recall"] = precision_recall(real_feats[:n], feats)
            if clf is None:
                out["views"][name] = m
                continue
            pred = probs.argmax(1)
            if conditional:
                m["conditional_accuracy"], m["per_digit_accuracy"] = conditional_accuracy(pred, labels)
            m["class_histogram"] = class_histogram(pred)
            out["evaluators"][name] = m
        if len(probs_all) > 1:
            out["confident_rate"] = confident_rate(*probs_all[:2])
        out["speck_rate"] = float(speck_mask(images).double().mean())
        out["pixel_stats"] = pixel_stats(pixel_summary(images), self._real_pixels)
        # real digits' own figures at this N, where the real sets hold 2 disjoint subsets of N (else None)
        out["real"] = self.real_figures(n) if min(len(self.real), len(self.floor_images)) >= 2 * n else None
        return out
