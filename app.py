"""MNIST diffusion lab: a Gradio app that shows score-based diffusion (Song et al. 2021, VE SDE with
sigma = 25) working on MNIST, in pixel space and in an autoencoder's latent space.

    python app.py [--weights-dir weights] [--hub-repo USER/REPO [--revision SHA]] [--host H] [--port P]

The Space entry: load the models (never raising for missing weights), build the UI (`ui/`, one module per tab),
launch. The device is chosen once, in `pick_device`; `demo` is built on first access from the default weights.
"""
from __future__ import annotations

import os

from ui.server import create_demo, launch_kwargs, main, pick_device

__all__ = ["create_demo", "launch_kwargs", "main", "pick_device"]


def __getattr__(name: str):
    """`app.demo`, built on first access from the default weights (env HUB_REPO / HUB_REVISION honoured)."""
    if name == "demo":
        globals()["demo"] = built = create_demo(hub_repo=os.environ.get("HUB_REPO") or None,
                                               revision=os.environ.get("HUB_REVISION") or None)
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
