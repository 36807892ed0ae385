"""Push trained weights folders to the Hugging Face Hub and record the commit the app should pin.

    python -m train.push --repo-id USER/mnist-diffusion-lab [--names pixel-cond,latent-cond,autoencoder]
                         [--weights-dir weights] [--revision-file weights/hub.json] [--token TOKEN]
                         [--no-root-card]

Every named folder is verified first (only config.json, model.safetensors, README.md and the training
time-lapse inside; strict reload; finite outputs); if any fails nothing is pushed. Each folder is then
uploaded to <repo>/<name>/ in its own commit; then the repo's root README.md (a model card listing every
model folder of --weights-dir, from train.cards.root_card) and the LICENSE, in one more commit. The last
commit (which holds all of them) is written to the revision file as {"repo", "revision", "models"}; the
app loads that revision with --hub-repo. The token comes from --token, HF_TOKEN, or `hf auth login`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusion.hub import MODEL_CLASSES, PIN_FILE, push_folder, push_root_files, record_pin, verify_folder
from diffusion.registry import REPO_ROOT


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
    p.add_argument("--no-root-card", action="store_true", help="push the model folders only (no root README/LICENSE)")
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
    if not args.no_root_card:
        from train.cards import check_card, root_card
        card = str(root_card(weights))
        problems = check_card(card)
        if problems:
            sys.exit(f"the root model card would not validate: {problems}")
        files = {"README.md": card.encode()}
        if (REPO_ROOT / "LICENSE").is_file():
            files["LICENSE"] = REPO_ROOT / "LICENSE"
        sha = push_root_files(args.repo_id, files, token=args.token)
        print(f"root model card and license: pushed to {args.repo_id} at commit {sha}")
    pin_path = Path(args.revision_file) if args.revision_file else weights / PIN_FILE
    record_pin(pin_path, args.repo_id, sha, commits)
    print(f"recorded {args.repo_id}@{sha} in {pin_path}")
    return sha


def cli() -> None:
    """Console-script entry point (`mnist-diffusion-push`): main's return value is not an exit code."""
    main()


if __name__ == "__main__":
    main()
