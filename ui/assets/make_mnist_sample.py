"""Rebuild ui/assets/mnist_test_sample.npz: the first 10 MNIST *test* images of each digit (100 in all),
as uint8 (100, 28, 28) `images` with int64 `labels`, sorted by digit. The app ships this file so the
forward-diffusion tab works without the dataset.

    python ui/assets/make_mnist_sample.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "mnist_test_sample.npz"
PER_DIGIT = 10


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from train.data import load_mnist

    x, y = load_mnist("test")
    x, y = np.asarray(x)[:, 0], np.asarray(y)
    idx = np.concatenate([np.flatnonzero(y == d)[:PER_DIGIT] for d in range(10)])
    images = np.round(x[idx] * 255).clip(0, 255).astype(np.uint8)
    np.savez_compressed(OUT, images=images, labels=y[idx].astype(np.int64), test_index=idx.astype(np.int64))
    print(f"wrote {OUT}: {images.shape} images, digits {np.bincount(y[idx]).tolist()}")


if __name__ == "__main__":
    main()
