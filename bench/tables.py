"""Table cells for metrics from diffusion.metrics.Evaluator, shared by the benchmarks' markdown reports.
c = weights/classifier's feature space, r = weights/classifier-resnet's."""
from __future__ import annotations

import json
from pathlib import Path

EVALUATOR_COLUMNS = "FD ratio c / r | KID c / r (x1e3) | precision c / r | recall c / r | accuracy c / r | confident | speck"
EVALUATOR_RULE = "|---" * 7


def cell(d: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    """d[key] * scale formatted, or n/a where the evaluator has no such figure."""
    return format(d[key] * scale, fmt) if key in d else "n/a"


def both(m: dict, key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    """'c / r': the figure in both feature spaces."""
    ev = m["evaluators"]
    return f"{cell(ev['classifier'], key, scale, fmt)} / {cell(ev.get('classifier-resnet', {}), key, scale, fmt)}"


def evaluator_cells(m: dict) -> str:
    """The EVALUATOR_COLUMNS cells of one Evaluator result, '|'-separated (no outer bars)."""
    return (f"{both(m, 'frechet_ratio')} | {both(m, 'kid_mean', 1e3)} | {both(m, 'precision')} | {both(m, 'recall')} | "
            f"{both(m, 'conditional_accuracy', 100, '.1f')} | {100 * m.get('confident_rate', float('nan')):.1f}% | "
            f"{100 * m['speck_rate']:.1f}%")


def write_results(results: dict, out: Path, title: str, table: str) -> None:
    """A benchmark's output: the table printed, `results` as JSON at `out`, `# title` and the table beside it (.md)."""
    print("\n" + table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(f"# {title}\n\n{table}")
