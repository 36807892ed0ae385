"""Candidate weights against the shipped ones, setting by setting and at each one's rule-v3 default: does every
evaluator say the candidate is better? (issue 28: "ship each model only where every evaluator says it is better").

Both stores are `bench.defaults_v3` stores (the shipped `bench/results/defaults_v3.json`, a candidate's written with
`--weights-dir CANDIDATES --store FILE`), rows at the same N and seeds. Two readings:

1. **Same settings**: for every setting both stores measured, the candidate's FD ratio against the shipped one in each
   feature space, and the speck rate; counted (FD lower in k of n settings) and averaged.
2. **Each at its own default**: `choose_setting_v3` picks in each store. The candidate is better only if at its pick
   the FD ratio is lower in **every** feature space, it fails no rule-v3 check that the shipped pick passes, and
   its speck rate is not higher by more than real digits' tolerance; every reason it is not is named.

    python -m bench.compare_candidates --model pixel-cond --candidate bench/results/defaults_v3_long.json
Writes the comparison beside the candidate store (<store>_<model>_compare.md) and prints it; `--shipped OTHER` compares
against another candidate's store instead (<store>_<model>_vs_<other>_compare.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.defaults_v3 import SPACES, STORE, _setting_text
from diffusion.setting_rules import _spaces, choose_setting_v3, fd_ratios, rule_v3_checks, worst_fd_ratio_v3


def _key(row: dict) -> tuple:
    return row["samples"], json.dumps(row["setting"], sort_keys=True)


def same_settings(shipped: list[dict], candidate: list[dict]) -> dict:
    """Pairs of rows with the same setting and N: per space, in how many the candidate's FD ratio is lower, and the
    mean ratio of ratios; the mean and sd of the speck-rate difference (candidate - shipped)."""
    by_key = {_key(r): r for r in shipped}
    pairs = [(by_key[_key(c)], c) for c in candidate if _key(c) in by_key]
    out = {"pairs": len(pairs), "spaces": {}, "speck_diff_mean": None, "speck_diff_sd": None}
    if not pairs:
        return out
    for space in SPACES:
        both = [(fd_ratios(s["metrics"])[space], fd_ratios(c["metrics"])[space]) for s, c in pairs
                if space in _spaces(s["metrics"]) and space in _spaces(c["metrics"])]
        if both:
            out["spaces"][space] = {"lower": sum(c < s for s, c in both), "of": len(both),
                                    "mean_ratio": statistics.fmean(c / s for s, c in both)}
    diffs = [c["metrics"]["speck_rate"] - s["metrics"]["speck_rate"] for s, c in pairs]
    out["speck_diff_mean"] = statistics.fmean(diffs)
    out["speck_diff_sd"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return out


def verdict(shipped_pick: dict, candidate_pick: dict, baseline: str = "shipped") -> tuple[bool, list[str]]:
    """(better by every evaluator?, the reasons it is not) for two rows, each its store's rule-v3 pick; `baseline`
    names the first store in the reasons."""
    s, c = shipped_pick["metrics"], candidate_pick["metrics"]
    reasons = []
    rs, rc = fd_ratios(s), fd_ratios(c)
    for space in SPACES:
        if space in rs and space in rc and not rc[space] < rs[space]:
            reasons.append(f"FD ratio in {space} not lower ({rc[space]:.2f} against {rs[space]:.2f})")
    passed, now = rule_v3_checks(s), rule_v3_checks(c)
    reasons += [f"fails '{name}', which the {baseline} default meets" for name, ok in now.items()
                if not ok and passed.get(name, False)]
    tolerance = c["real"]["speck_rate"]["tolerance"]
    if c["speck_rate"] > s["speck_rate"] + tolerance:
        reasons.append(f"specks {c['speck_rate']:.2%} against {s['speck_rate']:.2%} (more than real digits' "
                       f"tolerance {tolerance:.2%} higher)")
    return not reasons, reasons


def _pick_line(label: str, row: dict) -> str:
    m = row["metrics"]
    ratios = fd_ratios(m)
    missed = [name for name, ok in rule_v3_checks(m).items() if not ok]
    acc = " / ".join(f"{100 * v['conditional_accuracy']:.2f}" for v in m["evaluators"].values()
                     if "conditional_accuracy" in v) or "n/a"
    return (f"| {label} | {_setting_text(row['setting'])} | {worst_fd_ratio_v3(m):.2f} | "
            + " / ".join(f"{ratios[s]:.2f}" if s in ratios else "n/a" for s in SPACES)
            + f" | {acc} | {m['speck_rate']:.2%} | {', '.join(missed) or 'none'} |")


def compare(shipped_rows: list[dict], candidate_rows: list[dict], model: str,
            baseline: str = "shipped") -> tuple[bool, str]:
    """(better by every evaluator at the defaults?, the comparison as markdown); `baseline` names the first store
    (another candidate's, e.g. a plain-trained run against a taught one)."""
    shipped = [r for r in shipped_rows if r["model"] == model]
    candidate = [r for r in candidate_rows if r["model"] == model]
    if not shipped or not candidate:
        raise ValueError(f"{model}: no rows in the {'shipped' if not shipped else 'candidate'} store")
    n = max(r["samples"] for r in candidate)
    shipped_n = [r for r in shipped if r["samples"] == n]
    if not shipped_n:
        raise ValueError(f"{model}: the shipped store has no rows at N = {n}, the candidate's")
    candidate_n = [r for r in candidate if r["samples"] == n]
    picks = choose_setting_v3(shipped_n), choose_setting_v3(candidate_n)
    better, reasons = verdict(*picks, baseline=baseline)
    same = same_settings(shipped_n, candidate_n)
    lines = [f"# {model}: candidate against {baseline} (N = {n})", "",
             f"**Verdict: {'better by every evaluator: ships' if better else 'not better by every evaluator'}**", ""]
    lines += [f"- {r}" for r in reasons] + ([""] if reasons else [])
    lines += ["| weights | rule-v3 default | worst FD ratio | FD ratio c / r / pca / ae | accuracy % | specks | "
              "rule v3 misses |", "|---|---|---|---|---|---|---|",
              _pick_line(baseline, picks[0]), _pick_line("candidate", picks[1]), ""]
    lines.append(f"Same settings ({same['pairs']} measured in both stores):")
    lines.append("")
    for space, s in same["spaces"].items():
        lines.append(f"- {space}: FD ratio lower in {s['lower']} of {s['of']}; candidate / {baseline} "
                     f"{s['mean_ratio']:.3f} on average")
    if same["pairs"]:
        lines.append(f"- specks: candidate - {baseline} {100 * same['speck_diff_mean']:+.2f} points on average "
                     f"(sd {100 * same['speck_diff_sd']:.2f})")
    return better, "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--candidate", type=Path, required=True, help="the candidate's defaults_v3 store")
    p.add_argument("--shipped", type=Path, default=STORE,
                   help="the store to beat (default: the shipped one); another is named by its file in the report, "
                        "which is written as <candidate>_<model>_vs_<its stem>_compare.md")
    a = p.parse_args(argv)
    for label, path in (("--candidate", a.candidate), ("--shipped", a.shipped)):
        if not path.is_file():
            raise SystemExit(f"{label} {path}: no such store (write one with python -m bench.defaults_v3 --store)")
    try:
        shipped = a.shipped.resolve() == STORE.resolve()
        baseline = "shipped" if shipped else a.shipped.stem
        better, text = compare(json.loads(a.shipped.read_text()), json.loads(a.candidate.read_text()), a.model,
                               baseline)
    except ValueError as e:
        raise SystemExit(str(e))
    suffix = "" if shipped else f"_vs_{a.shipped.stem}"
    out = a.candidate.with_name(f"{a.candidate.stem}_{a.model}{suffix}_compare.md")
    out.write_text(text)
    print(text + f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
