"""Where the shipped weights are, for a checkout, an installed wheel and the Space alike.

`default_weights_dir()` takes, in order:
1. $MNIST_DIFFUSION_WEIGHTS, when set;
2. the checkout the package runs from: weights/ beside the `diffusion` package (a source tree, an editable
   install, the Space, which uploads the same layout);
3. the copy a wheel installs: `pip install .` ships weights/ as data files (about 23 MB) under
   <prefix>/share/mnist-diffusion-lab/weights, the prefix being the environment's (or the user's, for --user);
4. else the checkout's path, which does not exist: loading then fails naming --weights-dir,
   MNIST_DIFFUSION_WEIGHTS and --hub-repo / HUB_REPO.

`weights_origin(path)` says which of these a folder is, for the app's load messages.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

WEIGHTS_ENV = "MNIST_DIFFUSION_WEIGHTS"
# where pyproject's [tool.setuptools.data-files] puts the weights, relative to the install prefix
DATA_SUBDIR = Path("share", "mnist-diffusion-lab", "weights")
CHECKOUT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def installed_weights_dirs() -> list[Path]:
    """Where an installed wheel's weights can be: <prefix>/share/mnist-diffusion-lab/weights for the
    environment's prefixes and the user base, without duplicates."""
    prefixes = [sysconfig.get_path("data"), sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None)]
    out: list[Path] = []
    for prefix in prefixes:
        if prefix and (Path(prefix) / DATA_SUBDIR) not in out:
            out.append(Path(prefix) / DATA_SUBDIR)
    return out


def _has_models(folder: Path) -> bool:
    return folder.is_dir() and any((p / "config.json").is_file() for p in folder.iterdir())


def default_weights_dir() -> Path:
    """The weights folder the app and the library use when none is given (the rule in the module docstring)."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    if _has_models(CHECKOUT_WEIGHTS):
        return CHECKOUT_WEIGHTS
    for folder in installed_weights_dirs():
        if _has_models(folder):
            return folder
    return CHECKOUT_WEIGHTS


def weights_origin(path) -> str:
    """'the checkout', 'the installed package', '$MNIST_DIFFUSION_WEIGHTS' or 'a folder given': where `path` is."""
    path = Path(path).resolve()
    if os.environ.get(WEIGHTS_ENV) and path == Path(os.environ[WEIGHTS_ENV]).resolve():
        return f"${WEIGHTS_ENV}"
    if path == CHECKOUT_WEIGHTS:
        return "the checkout"
    if any(path == folder.resolve() for folder in installed_weights_dirs()):
        return "the installed package"
    return "a folder given"
