"""How long each shipped model trained, on what: one README table rendered from the committed training records
(train/records/<name>.json, written by train.common.finish), so the README cannot drift from what actually ran.

    python -m train.training_table          # print the table (paste it into README.md; tests/test_docs.py checks it)
"""
from __future__ import annotations

import json
from pathlib import Path

from diffusion.registry import model_folders
from train.common import RECORDS
MNIST_TRAIN = 60_000
HEADER = ["| model | optimizer steps × batch | images seen (× the 60k training digits) | wall time | on |", "|---|---:|---:|---:|---|"]


def images_seen(record: dict) -> tuple[int, str]:
    """(images, "steps × batch" as run): a student sums the stages that made it; a guide is its checkpoint's step."""
    cfg = record.get("config", {})
    batch = int(cfg.get("batch_size") or 0)
    if "stages" in record:
        steps = sum(int(s.get("steps") or 0) for s in record["stages"])
        return steps * batch, f"{steps:,} × {batch} ({len([s for s in record['stages'] if s.get('steps')])} stages)"
    steps = int(record.get("checkpoint_step") or record.get("steps_done") or cfg.get("steps") or 0)
    return steps * batch, f"{steps:,} × {batch}"


def wall_minutes(record: dict) -> float:
    """The run's whole wall time: total_wall_s counts every resumed segment; wall_time_s only the last process."""
    return float(record.get("total_wall_s") or record.get("wall_time_s") or 0.0) / 60


def table_lines(records_dir: Path = RECORDS) -> list[str]:
    lines = list(HEADER)
    for name in model_folders():
        path = records_dir / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        images, steps = images_seen(record)
        where = (record.get("device") or ("CPU (1 threads)" if "checkpoint_step" in record else "n/a")).replace(
            "(1 threads)", "(1 thread)")
        if "checkpoint_step" in record:
            where += f"; an early checkpoint of {record.get('guides')}'s run"
        lines.append(f"| `{name}` | {steps} | {images:,} ({images / MNIST_TRAIN:.1f}) | {wall_minutes(record):.0f} min "
                     f"| {where} |")
    return lines


if __name__ == "__main__":
    print("\n".join(table_lines()))
