"""`mnist-diffusion-train MODEL [flags]`: one console script for every training script, in build order.

    mnist-diffusion-train pixel-cond --steps 12000 --resume     # = python -m train.pixel_cond --steps 12000 --resume
    mnist-diffusion-train pixel-cond --help                     # that script's own flags

Each subcommand runs the module's main() with the remaining flags, so behaviour, defaults and the run record
(which names the `python -m train.X` command) are the module's own.
"""
from __future__ import annotations

import importlib
import sys

import train.common

SCRIPTS = {                                   # subcommand -> module, in the order train/build_all.sh builds them
    "classifier": "train.classifier",
    "classifier-resnet": "train.classifier_resnet",
    "autoencoder": "train.autoencoder",
    "pixel-cond": "train.pixel_cond",
    "latent-cond": "train.latent_cond",
    "pixel-uncond": "train.pixel_uncond",
    "distill": "train.distill",
    "evaluate": "train.evaluate",
}


def usage() -> str:
    return ("usage: mnist-diffusion-train MODEL [flags]   (MODEL --help for its flags)\n"
            "MODEL: " + ", ".join(SCRIPTS))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, flags = argv[0], argv[1:]
    if name not in SCRIPTS:
        print(f"mnist-diffusion-train: unknown model {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SCRIPTS[name])
    train.common.INVOKED_MODULE = SCRIPTS[name]
    sys.argv = [f"mnist-diffusion-train {name}", *flags]       # argparse's prog and the run record's flags
    module.main(flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
