"""An autoguidance guide installed beside the model it guides (diffusion.autoguidance): its weights in their own folder
(one of the registry's guide names), the model's config.json naming it (`autoguide`, which load_pipeline reads), and
its training record. Used by the trainer (a run with --guide-step installs its guide at the end, train/diffusion_models.py)
and by train/export_guide.py (a guide from any checkpoint of a run).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from diffusion.autoguidance import AutoGuided
from diffusion.hub_files import CONFIG_NAME
from diffusion.registry import DEFAULT_WEIGHTS_DIR, GUIDE_NAMES
from diffusion.score import ScoreModel
from train.common import RECORDS
from train.loop import save_weights


def install_guide(guide, model_dir: Path, out: Path, record: dict) -> Path:
    """Save `guide` (a ScoreModel) to `out`, name it in model_dir/config.json (`autoguide`) and keep `record` beside
    the other training records when `out` is under weights/."""
    if out.name not in GUIDE_NAMES:
        raise SystemExit(f"the guide's folder must be named one of {', '.join(GUIDE_NAMES)}, got {out.name!r}")
    config_path = model_dir / CONFIG_NAME
    config = json.loads(config_path.read_text())
    AutoGuided(ScoreModel.from_pretrained(str(model_dir)), guide)    # unconditional, same shape and SDE, or an error
    dest = save_weights(guide, out)
    config["autoguide"] = out.name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if dest.resolve().parent == DEFAULT_WEIGHTS_DIR.resolve():
        RECORDS.mkdir(parents=True, exist_ok=True)
        (RECORDS / f"{dest.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{dest}: the guide (step {record.get('checkpoint_step')}); {config_path} now names it")
    return dest


def guide_record(run: Path, step: int, wall_s, guides: str, command: str, parameters: int) -> dict:
    return {"command": command, "source_run": str(run), "checkpoint_step": step, "total_wall_s": wall_s,
            "guides": guides, "config": json.loads((run / "config.json").read_text()), "parameters": parameters,
            "exported": time.strftime("%Y-%m-%d")}
