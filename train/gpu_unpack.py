"""Unpack what a device run of train/gpu_retrain.sh or gpu_distill.sh brought back into weights-layout folders
OUTSIDE weights/, ready for train.evaluate and bench.defaults (docs/gpu-run.md).

    python -m train.gpu_unpack /work/.device/<files_at> --dest gpu-results

gives
    gpu-results/weights/       the new pixel-cond, latent-cond, pixel-uncond (+ the shipped pixel-uncond-guide, named
                               in its config.json), the students after a distillation, and copies of the shipped
                               classifier, classifier-resnet and autoencoder that evaluation and latent-cond need
    gpu-results/weights-ae2/   the new autoencoder and the latent-cond trained on its latents (+ the classifiers)
    gpu-results/weights-narrow/ the narrower pixel-cond (issue 24) (+ the classifiers and the shipped autoencoder)
    gpu-results/runs/          each run's config, history, record, sample grids, newest checkpoint (a resume:
                               python -m train.gpu_prepare --resume gpu-results)
    gpu-results/summary.json, log.txt, logs/
A run killed before it wrote weights gets its newest checkpoint's EMA weights instead (said in unpacked.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "weights"
EVALUATORS = ("classifier", "classifier-resnet")


def refuse_shipped(dest: Path) -> None:
    """The shipped weights are never a destination: a rehearsal or an unpack must not overwrite them."""
    d, w = dest.resolve(), SHIPPED.resolve()
    if d == w or w in d.parents or d in w.parents:
        raise SystemExit(f"--dest {dest}: must lie outside {SHIPPED} (and not contain it); "
                         f"shipping a result is a separate, reviewed step")


def safe_extract(archive: Path, dest: Path) -> list[str]:
    """Extract regular files and folders only, each inside dest (no links, devices, absolute or '..' names)."""
    names = []
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or dest.resolve() not in target.parents:
                raise SystemExit(f"{archive}: refusing member {m.name!r} (not a plain file inside the destination)")
        for m in tar.getmembers():
            if m.isfile():
                target = dest / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                names.append(m.name)
    return names


def weights_from_checkpoint(dest: Path, run: str, weights: Path) -> str | None:
    """A score run killed before it wrote weights: its newest checkpoint's EMA weights, in weights layout."""
    from train.diffusion_models import ema_from_checkpoint
    from train.loop import save_weights
    run_dir = dest / "runs" / run
    ckpts = sorted(p for p in run_dir.glob("ckpt-*") if (p / "state.json").is_file())
    if not ckpts or not (run_dir / "config.json").is_file():
        return None
    config = json.loads((run_dir / "config.json").read_text())
    if "space" not in config:
        return None                                    # not a score model (the autoencoder): nothing to export
    if config["space"] == "latent":                    # the device's autoencoder path -> the one unpacked here
        ae = (dest / "weights-ae2" / "autoencoder") if run.endswith("-ae2") else (SHIPPED / "autoencoder")
        config["autoencoder"] = str(ae)
        (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    save_weights(ema_from_checkpoint(run_dir, ckpts[-1]), weights)
    return ckpts[-1].name


def add_companions(dest: Path) -> list[str]:
    """What evaluation needs beside the new models: the shipped evaluators in every weights folder; the shipped
    autoencoder where no new one was trained (a latent-cond's decoder, and the evaluator's autoencoder-latent view:
    without it that view is silently missing); the shipped guide for the new pixel-uncond."""
    notes = []
    for folder in (dest / "weights", dest / "weights-ae2", dest / "weights-narrow"):
        if not folder.is_dir():
            continue
        for name in EVALUATORS + (() if folder.name == "weights-ae2" else ("autoencoder",)):
            if not (folder / name).exists():
                shutil.copytree(SHIPPED / name, folder / name)
    weights = dest / "weights"
    uncond = weights / "pixel-uncond"
    if (uncond / "config.json").is_file() and not json.loads((uncond / "config.json").read_text()).get("autoguide"):
        from diffusion.score import ScoreModel
        from train.guides import install_guide
        guide = ScoreModel.from_pretrained(str(SHIPPED / "pixel-uncond-guide")).eval()
        record = {"note": "the shipped guide (its own CPU run's step-500 EMA weights), installed by train.gpu_unpack "
                          "for the GPU-trained pixel-uncond"}
        install_guide(guide, uncond, weights / "pixel-uncond-guide", record)
        notes.append("pixel-uncond: guided by the shipped pixel-uncond-guide")
    return notes


def unpack(files: Path, dest: Path) -> dict:
    refuse_shipped(dest)
    archives = sorted(files.glob("*.tar.gz"))
    if not archives:
        raise SystemExit(f"{files}: no *.tar.gz (give the files_at folder of the device call's reply)")
    dest.mkdir(parents=True, exist_ok=True)
    report: dict = {"from": str(files), "archives": {}, "exported_from_checkpoint": {}, "notes": []}
    for archive in archives:
        report["archives"][archive.name] = len(safe_extract(archive, dest))
    for extra in ("summary.json", "log.txt"):
        if (files / extra).is_file():
            shutil.copy2(files / extra, dest / extra)
    summary = json.loads((dest / "summary.json").read_text()) if (dest / "summary.json").is_file() else {"runs": []}
    for r in summary.get("runs", []):
        weights = dest / r["weights"]
        if not (weights / "model.safetensors").is_file():
            ckpt = weights_from_checkpoint(dest, r["run"], weights)
            report["exported_from_checkpoint"][r["run"]] = ckpt
    report["notes"] = add_companions(dest)
    (dest / "unpacked.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, help="the folder the device call's files came back to (files_at)")
    p.add_argument("--dest", type=Path, default=ROOT / "gpu-results")
    a = p.parse_args(argv)
    report = unpack(a.files, a.dest)
    print(json.dumps(report, indent=1))
    for folder in ("weights", "weights-ae2"):
        models = [m for m in ("autoencoder", "pixel-cond", "latent-cond", "pixel-uncond", "pixel-cond-distilled",
                              "pixel-cond-distilled-2step", "pixel-cond-distilled-1step")
                  if (a.dest / folder / m / "model.safetensors").is_file()
                  and not (folder == "weights" and m == "autoencoder")]
        if models:
            print(f"evaluate: python -m train.evaluate --weights-dir {a.dest / folder} --models {','.join(models)} "
                  f"--samples 2000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
