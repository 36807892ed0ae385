"""Push trained weights folders to the Hugging Face Hub and record the commit the app should pin.

    python -m train.push --repo-id USER/mnist-diffusion-lab [--names pixel-cond,latent-cond,autoencoder]
                         [--weights-dir weights] [--revision-file weights/hub.json] [--token TOKEN]

Every named folder is verified first (only config.json, model.safetensors, README.md inside; strict
reload; finite outputs); if any fails nothing is pushed. Each folder is then uploaded to
<repo>/<name>/ in its own commit, and the last commit (which holds all of them) is written to the
revision file as {"repo", "revision", "models"}; the app loads that revision with --hub-repo.
The token comes from --token, HF_TOKEN, or `hf auth login`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusion.hub import MODEL_CLASSES, PIN_FILE, push_folder, record_pin, verify_folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.push", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id", required=True, help="Hub model repository, USER/NAME (created if missing)")
    p.add_argument("--names", default="",
                   help=f"comma-separated model names (default: every one of {', '.join(MODEL_CLASSES)} "
                        f"found in --weights-dir)")
    p.add_argument("--weights-dir", default="weights", help="folder holding one save_pretrained folder per model")
    p.add_argument("--revision-file", default="", help=f"where to record the commit (default: WEIGHTS_DIR/{PIN_FILE})")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--dry-run", action="store_true", help="verify the folders, push nothing")
    return p.parse_args(argv)


def main(argv=None) -> str | None:
    args = parse_args(argv)
    weights = Path(args.weights_dir)
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        unknown = [n for n in names if n not in MODEL_CLASSES]
        if unknown:
            sys.exit(f"unknown model name(s) {unknown}; choose from {', '.join(MODEL_CLASSES)}")
    else:
        names = [n for n in MODEL_CLASSES if (weights / n).is_dir()]
        skipped = [n for n in MODEL_CLASSES if n not in names]
        if skipped:
            print(f"not in {weights}, skipped: {', '.join(skipped)}")
    if not names:
        sys.exit(f"nothing to push: no model folders in {weights}")

    problems = []
    for name in names:  # all or nothing: verify every folder before the first upload
        try:
            files = verify_folder(weights / name, name)
            print(f"{name}: ok ({', '.join(files)})")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: {type(e).__name__}: {e}")
    if problems:
        sys.exit("refusing to push:\n  " + "\n  ".join(problems))
    if args.dry_run:
        print("dry run: nothing pushed")
        return None

    commits = {}
    for name in names:
        commits[name] = sha = push_folder(weights / name, args.repo_id, token=args.token, record=False)
        print(f"{name}: pushed to {args.repo_id}/{name} at commit {sha}")
    pin_path = Path(args.revision_file) if args.revision_file else weights / PIN_FILE
    record_pin(pin_path, args.repo_id, sha, commits)
    print(f"recorded {args.repo_id}@{sha} in {pin_path}")
    return sha


if __name__ == "__main__":
    main()
