"""Export an early checkpoint of a score model's own run as its autoguidance guide (diffusion.autoguidance).

    python -m train.export_guide --run ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3 \
        --ckpt ~/.cache/mnist-diffusion-lab/runs/pixel-uncond-v3-keep/ckpt-00001000 \
        --model weights/pixel-uncond --out weights/pixel-uncond-guide

Writes the checkpoint's EMA weights to --out (save_pretrained layout), names the guide in --model's config.json
(`autoguide`, which load_pipeline reads), records the step and training time of the checkpoint beside the
other training records when --out is under weights/, and keeps a copy in the run (RUN/guide), so that resuming the
run later (e.g. to extend it) installs the same guide again at its end. The run's checkpoints rotate (--keep): copy the one you want
to keep before the run passes it, or train with a larger --keep.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion.hub_files import CONFIG_NAME
from diffusion.registry import DEFAULT_WEIGHTS_DIR, GUIDE_NAMES, model_spec
from train.diffusion_models import ema_from_checkpoint
from train.guides import guide_record, install_guide  # noqa: F401  (re-exported: the guide's installation)


def export_guide(run: Path, ckpt: Path, model_dir: Path, out: Path) -> dict:
    """The EMA weights of checkpoint `ckpt` of `run` as `model_dir`'s guide in `out`; returns the record."""
    if out.name not in GUIDE_NAMES:
        raise SystemExit(f"--out must be a folder named one of {', '.join(GUIDE_NAMES)}, got {out.name!r}")
    for path, what in ((run / "config.json", "--run: not a training run directory (no config.json)"),
                       (ckpt / "state.json", "--ckpt: not a checkpoint folder (no state.json)"),
                       (ckpt / "state.safetensors", "--ckpt: not a checkpoint folder (no state.safetensors)"),
                       (model_dir / CONFIG_NAME, "--model: not a weights folder (no config.json)")):
        if not path.is_file():
            raise SystemExit(f"{what}: {path}")
    state = json.loads((ckpt / "state.json").read_text())
    guide = ema_from_checkpoint(run, ckpt)
    record = guide_record(run, state["step"], state.get("wall_s"), model_dir.name,
                          f"python -m train.export_guide --run {run} --ckpt {ckpt} --model {model_dir} --out {out}",
                          sum(p.numel() for p in guide.parameters()))
    install_guide(guide, model_dir, out, record)
    guide.save_pretrained(run / "guide")       # the run remembers its guide: a resumed run's finish reinstalls it
    (run / "guide" / "step.json").write_text(json.dumps({"step": state["step"], "wall_s": state.get("wall_s")}))
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the run directory (its config.json)")
    p.add_argument("--ckpt", type=Path, required=True, help="a checkpoint folder of that run (ckpt-NNNNNNNN)")
    guide = GUIDE_NAMES[0]                          # the registry's guide (pixel-uncond-guide) and the model it guides
    p.add_argument("--model", type=Path, default=DEFAULT_WEIGHTS_DIR / model_spec(guide).guides,
                   help="the model it guides")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS_DIR / guide)
    a = p.parse_args(argv)
    export_guide(a.run.expanduser(), a.ckpt.expanduser(), a.model.expanduser(), a.out.expanduser())


if __name__ == "__main__":
    main()
