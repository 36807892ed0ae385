"""Table cells for metrics from diffusion.metrics.Evaluator, shared by the benchmarks' markdown reports.
c = weights/classifier's feature space, r = weights/classifier-resnet's."""
from __future__ import annotations

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
