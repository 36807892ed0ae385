"""Sampling defaults by rule v3 (issue 27): every setting scored in every view beside real digits' own figures.

Rule (`diffusion.setting_rules.choose_setting_v3`, committed before this sweep ran): among settings whose accuracy is within
the real-vs-real tolerance of real digits' under each classifier, whose speck rate and recall (in every feature space)
are no worse than real digits' by more than that tolerance, the lowest worst FD ratio over every feature space
(classifier, classifier-resnet, pixel-pca, autoencoder-latent; FD / real digits' mean FD at the same N); ties (to 2
decimals) go to the lower guidance. Real digits' figures are `Evaluator.real_figures` (mean, sd, tolerance = 2 sd over
5 disjoint real subsets of N).

One process works through a queue file (one setting a line: `model sampler steps w [key=value ...]`, e.g.
`pixel-cond dpmpp_2m_sde 10 1.0625` or `pixel-cond dpmpp_2m_sde 10 1.25 eta=0.5`), loading the evaluator once and
re-reading the queue before each row, so the queue can be extended while it runs; settings already stored are skipped.
Rows go to bench/results/defaults_v3.json (the locked store of bench/defaults.py; the v1/v2 rows in defaults.json are
kept as they were); the report is bench/results/defaults_v3.md.

    python -m bench.defaults_v3 --queue bench/results/defaults_v3_queue.txt --samples 2000 --stop-at 22:30
    python -m bench.defaults_v3 --report-only
    python -m bench.defaults_v3 --queue Q --weights-dir CANDIDATES --store bench/results/defaults_v3_candidates.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import inspect
import time
from pathlib import Path

from bench.defaults import RESULTS, load_rows, setting_key, store_row
from diffusion.guidance import SCHEDULE_KEYS, GuidanceSchedule
from diffusion.samplers import sampler_spec
from diffusion.setting_rules import choose_setting_v3, rule_v3_checks, worst_fd_ratio_v3

ROOT = RESULTS.parent.parent
STORE = RESULTS / "defaults_v3.json"
SPACES = ("classifier", "classifier-resnet", "pixel-pca", "autoencoder-latent")
SHORT = {"classifier": "c", "classifier-resnet": "r", "pixel-pca": "pca", "autoencoder-latent": "ae"}


def parse_setting(line: str) -> tuple[str, dict] | None:
    """'model sampler steps w [key=value ...]' -> (model, setting); None for a blank or # comment line."""
    words = line.split("#")[0].split()
    if not words:
        return None
    if len(words) < 4:
        raise ValueError(f"queue line needs 'model sampler steps w [key=value ...]', got {line.strip()!r}")
    model, sampler, steps, w, *extras = words
    setting = {"sampler": sampler, "steps": int(steps), "guidance": float(w)}
    for e in extras:
        key, sep, value = e.partition("=")
        if not sep:
            raise ValueError(f"queue line extra must be key=value, got {e!r} in {line.strip()!r}")
        setting[key] = float(value)
    return model, setting


def next_setting(queue: Path, samples: int, rows: list[dict]) -> tuple[str, dict] | None:
    """The first queued setting not yet stored at N = samples."""
    done = {setting_key(r) for r in rows}
    for line in queue.read_text().splitlines():
        parsed = parse_setting(line)
        if parsed and setting_key({"model": parsed[0], "setting": parsed[1], "samples": samples}) not in done:
            return parsed
    return None


def unnamed_options(pipe, sampler: str, named: dict) -> dict:
    """The sampler's own defaults for the model's default options that a row does not name: the pipeline gives its
    default sampler the model's options (e.g. the 2-step student's eta = 0.5), and a row `ddim 2 1.5` must measure
    eta = 0 (ddim's own default), as it says, not the model's."""
    if sampler != pipe.defaults.sampler:
        return {}
    params = inspect.signature(sampler_spec(sampler).fn).parameters
    return {k: params[k].default for k, _ in pipe.defaults.options if k not in named}


def run_queue(queue: Path, samples: int, weights_dir: Path, stop_at: dt.datetime | None, seed: int = 1234,
              store: Path = STORE) -> None:
    """Sample and score queued settings until the queue is done or `stop_at` (UTC) has passed (no new row starts)."""
    from diffusion.hub import load_pipeline
    from train.evaluate import generate, load_evaluator
    t0 = time.perf_counter()
    evaluator = load_evaluator(weights_dir)
    print(f"evaluator ready in {time.perf_counter() - t0:.0f} s", flush=True)
    pipes: dict = {}
    while (nxt := next_setting(queue, samples, load_rows(store))) is not None:
        if stop_at and dt.datetime.now(dt.timezone.utc) >= stop_at:
            print(f"stop time {stop_at:%H:%M} UTC reached: no new rows", flush=True)
            return
        model, s = nxt
        if model not in pipes:
            pipes[model] = load_pipeline(model, weights_dir=weights_dir)
        pipe = pipes[model]
        extras = {k: v for k, v in s.items() if k not in ("sampler", "steps", "guidance", *SCHEDULE_KEYS)}
        # w_lo / w_hi / w_ramp name a guidance schedule; without them w applies everywhere (never the model's default
        # schedule: a row measures exactly the setting it names)
        extras["guidance_schedule"] = GuidanceSchedule.from_setting(s)
        extras.update(unnamed_options(pipe, s["sampler"], extras))
        t0 = time.perf_counter()
        images, labels, nfe, wall = generate(pipe, samples, s["sampler"], s["steps"], s["guidance"], seed, **extras)
        m = evaluator.evaluate(images, labels if pipe.conditional else None)
        row = {"model": model, "samples": samples, "seed": seed, "nfe": nfe, "setting": s, "metrics": m,
               "sampling_seconds": round(wall, 1), "seconds": round(time.perf_counter() - t0, 1),
               "weights": str(weights_dir), "precision": pipe.compute_precision}
        store_row(row, store)
        print(model, s, f"worst FD ratio v3 {worst_fd_ratio_v3(m):.2f}", f"{row['seconds']:.0f} s",
              "fails: " + (", ".join(k for k, ok in rule_v3_checks(m).items() if not ok) or "none"), flush=True)


def pick_v3(rows: list[dict], model: str, samples: int | None = None) -> dict:
    """Rule v3's choice for `model` among its rows at the largest N present (or `samples`)."""
    mine = [r for r in rows if r["model"] == model]
    n = samples or max(r["samples"] for r in mine)
    return choose_setting_v3([r for r in mine if r["samples"] == n])


GRID = 0.0625      # the issue's guidance grid
GRID_BEYOND = 0.5  # ...from w = 1 to the rule's optimum + this


def coverage_gaps(rows: list[dict], model: str, samples: int | None = None) -> list[float]:
    """The guidance weights on the GRID from 1.0 to the pick's w + GRID_BEYOND not yet measured with the pick's sampler,
    steps and extras at the pick's N: empty when the sweep covers the model fully (then its default must be the pick)."""
    mine = [r for r in rows if r["model"] == model]
    n = samples or max(r["samples"] for r in mine)
    best = pick_v3(rows, model, n)["setting"]
    same = {r["setting"]["guidance"] for r in mine if r["samples"] == n and
            {k: v for k, v in r["setting"].items() if k != "guidance"} == {k: v for k, v in best.items() if k != "guidance"}}
    grid = [1.0 + GRID * i for i in range(int(round((best["guidance"] + GRID_BEYOND - 1.0) / GRID)) + 1)]
    return [w for w in grid if w not in same]


def _setting_text(s: dict) -> str:
    extras = "".join(f", {k} = {v:g}" for k, v in s.items() if k not in ("sampler", "steps", "guidance", *SCHEDULE_KEYS))
    where = f" on {GuidanceSchedule.from_setting(s).describe()}" if any(k in s for k in SCHEDULE_KEYS) else ""
    return f"{s['sampler']} {s['steps']}, w = {s['guidance']:g}{where}{extras}"


def _fd_cells(m: dict) -> str:
    spaces = {**m["evaluators"], **m.get("views", {})}
    real = {**m["real"]["evaluators"], **m["real"]["views"]}
    return " / ".join(f"{spaces[n]['frechet_distance'] / real[n]['frechet_distance']['mean']:.2f}"
                      if n in spaces else "n/a" for n in SPACES)


def _acc(m: dict) -> str:
    return " / ".join(f"{100 * m['evaluators'][n]['conditional_accuracy']:.2f}"
                      if "conditional_accuracy" in m["evaluators"].get(n, {}) else "n/a" for n in SPACES[:2])


def _recall(m: dict) -> str:
    spaces = {**m["evaluators"], **m.get("views", {})}
    return " / ".join(f"{spaces[n]['recall']:.3f}" if n in spaces else "n/a" for n in SPACES)


COLUMNS = ("| setting | worst FD ratio | FD ratio c / r / pca / ae | accuracy % c / r | recall c / r / pca / ae | "
           "confident | speck | ink share | mid-tone | stroke width (W1) | rule v3 misses |")


def real_line(real: dict) -> str:
    """Real digits' own figures at N as a table row: mean +- tolerance."""
    def pm(d, scale=1.0, fmt=".3f"):
        return f"{format(d['mean'] * scale, fmt)} ± {format(d['tolerance'] * scale, fmt)}"
    sp = {**real["evaluators"], **real["views"]}
    ps = real["pixel_stats"]
    return (f"| **real digits** (N = {real['samples']}, {real['subsets']} subsets) | 1 | "
            + " / ".join(f"1 ± {sp[n]['frechet_distance']['tolerance'] / sp[n]['frechet_distance']['mean']:.2f}"
                         for n in SPACES if n in sp)
            + " | " + " / ".join(pm(real["evaluators"][n]["conditional_accuracy"], 100, ".2f") for n in SPACES[:2])
            + " | " + " / ".join(pm(sp[n]["recall"]) for n in SPACES if n in sp)
            + f" | {pm(real['confident_rate'], 100, '.1f')}% | {pm(real['speck_rate'], 100, '.2f')}% | "
            f"{pm(ps['ink_share'], 1, '.4f')} | {pm(ps['midtone_share'], 1, '.4f')} | "
            f"{ps['stroke_width_mean']['mean']:.3f} ({pm(ps['stroke_width_w1'])}) | |")


def row_line(r: dict, pick: dict) -> str:
    m = r["metrics"]
    ps = m["pixel_stats"]
    misses = ", ".join(k for k, ok in rule_v3_checks(m).items() if not ok) or "none"
    bold = "**" if r is pick else ""
    return (f"| {bold}{_setting_text(r['setting'])}{bold} | {bold}{worst_fd_ratio_v3(m):.2f}{bold} | {_fd_cells(m)} | "
            f"{_acc(m)} | {_recall(m)} | {100 * m.get('confident_rate', float('nan')):.1f}% | "
            f"{100 * m['speck_rate']:.2f}% | {ps['ink_share']:.4f} | {ps['midtone_share']:.4f} | "
            f"{ps['stroke_width_mean']:.3f} ({ps['stroke_width_w1']:.3f}) | {misses} |")


COMPACT = ("| setting | worst FD ratio | accuracy % c / r | confident | speck | recall c / r / pca / ae | "
           "rule v3 misses |")


def _ordered(rows: list[dict], model: str) -> tuple[list[dict], dict | None]:
    """`model`'s rows at its largest N, in table order, and rule v3's pick among them (([], None) without rows)."""
    mine = [r for r in rows if r["model"] == model]
    if not mine:
        return [], None
    n = max(r["samples"] for r in mine)
    at_n = sorted((r for r in mine if r["samples"] == n),
                  key=lambda r: (r["setting"]["sampler"], r["setting"]["steps"], r["setting"]["guidance"],
                                 _setting_text(r["setting"])))
    return at_n, choose_setting_v3(at_n)


def compact_table(rows: list[dict], model: str) -> list[str]:
    """A model's rule-v3 table for its card: real digits' row, then every setting measured (the pick in bold, the
    rows that lost with what they miss). Empty when the sweep never measured the model."""
    at_n, best = _ordered(rows, model)
    if best is None:
        return []
    real = best["metrics"]["real"]
    sp = {**real["evaluators"], **real["views"]}
    pm = lambda d, k=1.0, f=".3f": f"{format(d['mean'] * k, f)} ± {format(d['tolerance'] * k, f)}"  # noqa: E731
    lines = [COMPACT, "|---" * 7 + "|",
             f"| real digits (N = {real['samples']}) | 1 | "
             + " / ".join(pm(real["evaluators"][n]["conditional_accuracy"], 100, ".2f") for n in SPACES[:2])
             + f" | {pm(real['confident_rate'], 100, '.1f')}% | {pm(real['speck_rate'], 100, '.2f')}% | "
             + " / ".join(pm(sp[n]["recall"]) for n in SPACES if n in sp)
             + " | |"]
    for r in at_n:
        m, b = r["metrics"], "**" if r is best else ""
        misses = ", ".join(k for k, ok in rule_v3_checks(m).items() if not ok) or "none"
        lines.append(f"| {b}{_setting_text(r['setting'])}{b} | {b}{worst_fd_ratio_v3(m):.2f}{b} | {_acc(m)} | "
                     f"{100 * m.get('confident_rate', float('nan')):.1f}% | {100 * m['speck_rate']:.2f}% | "
                     f"{_recall(m)} | {misses} |")
    return lines


def readme_table(rows: list[dict], models) -> list[str]:
    """One line per model for the README: rule v3's pick, its worst FD ratio, how many settings lost to it, and the
    closest of them (the next by the rule's order: fewest misses, then worst FD ratio)."""
    lines = ["| model | rule v3's pick (the default) | worst FD ratio | settings measured | closest setting that lost |",
             "|---|---|---:|---:|---|"]
    for model in models:
        at_n, best = _ordered(rows, model)
        if best is None:
            continue
        rest = [r for r in at_n if r is not best]
        runner = choose_setting_v3(rest) if rest else None
        lost = (f"{_setting_text(runner['setting'])} ({worst_fd_ratio_v3(runner['metrics']):.2f}; misses "
                f"{sum(not ok for ok in rule_v3_checks(runner['metrics']).values())})" if runner else "—")
        misses = sum(not ok for ok in rule_v3_checks(best["metrics"]).values())
        lines.append(f"| `{model}` | {_setting_text(best['setting'])} (misses {misses}) | "
                     f"{worst_fd_ratio_v3(best['metrics']):.2f} | {len(at_n)} | {lost} |")
    return lines


def report(rows: list[dict], out: Path | None = RESULTS / "defaults_v3.md", store: Path = STORE) -> str:
    """Per model: rule v3's pick, then every row (winners and losers) under real digits' own figures. `store`: the
    rows' file, named in the text (another than the shipped store: candidate weights, not the shipped ones)."""
    name = store.resolve().relative_to(ROOT) if store.resolve().is_relative_to(ROOT) else store
    candidates = store.resolve() != STORE.resolve()
    title = ("# Candidate weights by rule v3 (not the shipped models unless their cards say so)" if candidates
             else "# Sampling defaults by rule v3 (every view, real digits as the yardstick)")
    lines = [title, "",
             f"Produced by `python -m bench.defaults_v3` (rows in {name}). Rule: "
             "`diffusion.setting_rules.choose_setting_v3` (see the module docstring). FD ratio = FD / real digits' mean FD "
             "at the same N in that space (c = weights/classifier, r = weights/classifier-resnet, pca = raw pixels on 64 "
             "principal axes of training digits, ae = the autoencoder's latents); real digits' row gives mean ± "
             "tolerance (2 sd over disjoint real subsets). Stroke width: mean ridge width in pixels (W1 distance of "
             "the width distribution to the test set's). Same seeds for every setting.", ""]
    for model in sorted({r["model"] for r in rows}):
        at_n, best = _ordered(rows, model)
        n = best["samples"]
        misses = [k for k, ok in rule_v3_checks(best["metrics"]).items() if not ok]
        lines += [f"## {model}", "", f"**Pick: {_setting_text(best['setting'])}** (N = {n}, worst FD ratio "
                  f"{worst_fd_ratio_v3(best['metrics']):.2f}; "
                  + (f"no row meets every constraint; the pick, failing fewest, misses {', '.join(misses)}" if misses
                     else "meets every constraint") + "). "
                  + (f"Grid not yet covered (w = 1 to the pick + {GRID_BEYOND:g} by {GRID:g}): "
                     + ", ".join(f"{w:g}" for w in gaps) if (gaps := coverage_gaps(rows, model, n))
                     else "The grid is covered (w = 1 to the pick + 0.5 by 0.0625)."), "", COLUMNS, "|---" * 12 + "|",
                  real_line(best["metrics"]["real"])]
        lines += [row_line(r, best) for r in at_n]
        lines.append("")
    text = "\n".join(lines)
    if out is not None:
        out.write_text(text)
        write_card_tables(rows, out.with_name(CARD_TABLES.name))
    return text


CARD_TABLES = RESULTS / "defaults_v3_cards.json"     # {model: its compact table's lines}: what train.cards shows


def card_tables(rows: list[dict]) -> dict[str, list[str]]:
    """Every swept model's compact table (`compact_table`), for the model cards (train/cards.py reads the file, so the
    card code does not import the sweep's)."""
    return {model: compact_table(rows, model) for model in sorted({r["model"] for r in rows})}


def write_card_tables(rows: list[dict], path: Path = CARD_TABLES) -> None:
    import json
    path.write_text(json.dumps(card_tables(rows), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", default=str(RESULTS / "defaults_v3_queue.txt"))
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--stop-at", default=None, help="HH:MM UTC today: start no new row after it")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--store", default=str(STORE),
                   help="rows file; another file (e.g. candidate weights' rows) gets its report beside it as .md, and "
                        "the shipped report and card tables are left alone")
    a = p.parse_args(argv)
    store = Path(a.store)
    if a.report_only and not store.is_file():
        raise SystemExit(f"--store {store}: no such rows file (a sweep writes it: run without --report-only)")
    if not a.report_only:
        stop = None
        if a.stop_at:
            hh, mm = (int(x) for x in a.stop_at.split(":"))
            stop = dt.datetime.now(dt.timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0)
        run_queue(Path(a.queue), a.samples, Path(a.weights_dir), stop, store=store)
    rows = load_rows(store)
    if rows:
        shipped = store.resolve() == STORE.resolve()
        print(report(rows) if shipped else report(rows, out=None, store=store))
        if not shipped:
            store.with_suffix(".md").write_text(report(rows, out=None, store=store))


if __name__ == "__main__":
    main()
