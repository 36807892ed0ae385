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
from diffusion.registry import evaluation_order, model_spec

# the steps of the build that are not one model's own script: the students (all at once) and the evaluation
AFTER_MODELS = {"distill": "train.distill", "dmd": "train.dmd", "evaluate": "train.evaluate"}


def scripts() -> dict[str, str]:
    """subcommand -> module, in the order train/build_all.sh builds them: every registered model with a training
    script of its own (the registry's evaluation order; a guide comes from its model's run), then AFTER_MODELS."""
    own = {name: model_spec(name).train_module for name in evaluation_order() if model_spec(name).role != "guide"}
    return own | AFTER_MODELS


def usage() -> str:
    return ("usage: mnist-diffusion-train MODEL [flags]   (MODEL --help for its flags)\n"
            "MODEL: " + ", ".join(scripts()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, flags, known = argv[0], argv[1:], scripts()
    if name not in known:
        print(f"mnist-diffusion-train: unknown model {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(known[name])
    train.common.INVOKED_MODULE = known[name]
    sys.argv = [f"mnist-diffusion-train {name}", *flags]       # argparse's prog and the run record's flags
    module.main(flags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
