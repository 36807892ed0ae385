"""Push trained weights folders to the Hugging Face Hub and record the commit the app should pin.

    python -m train.push [--hub-user USER] [--weights-repo NAME|USER/NAME] [--source-url URL]
                         [--names pixel-cond,latent-cond,autoencoder] [--weights-dir weights]
                         [--revision-file weights/hub.json] [--token TOKEN] [--no-root-card] [--dry-run]

The repo comes from one place (diffusion/identity.py): the flags, else MNIST_DIFFUSION_HUB_USER /
MNIST_DIFFUSION_WEIGHTS_REPO / MNIST_DIFFUSION_SOURCE_URL, else the token's user with the repo name
mnist-diffusion-lab-weights (--repo-id USER/NAME is the old spelling of --weights-repo).

Every named folder is verified first (only config.json, model.safetensors, README.md and the training
time-lapse inside; strict reload; finite outputs); if any fails nothing is pushed. Then two commits, pin first:
the weights of every folder (one commit), then the cards rendered with that commit's id in their "Use" snippets,
the repo's root README.md (every model folder of --weights-dir, train.cards.root_card) and the LICENSE (one more
commit); a card that would carry a placeholder is refused before anything is sent. The cards commit (which holds
everything) is written to the revision file as {"repo", "revision", "models": {name: weights commit}}, and the
published cards are written back to weights/<name>/README.md. --dry-run shows the names, the files and a card's
"Use" snippet, and sends nothing. The token comes from --token, HF_TOKEN, or `hf auth login`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffusion.hub import MODEL_CLASSES, PIN_FILE, record_pin, verify_folder
from diffusion.identity import IdentityError, add_identity_arguments, find_placeholders, identity_from_args
from diffusion.publish import push_models
from diffusion.registry import REPO_ROOT


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.push", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_identity_arguments(p)
    p.add_argument("--repo-id", dest="weights_repo", help="the weights repo, USER/NAME (old name of --weights-repo)")
    p.add_argument("--names", default="",
                   help=f"comma-separated model names (default: every one of {', '.join(MODEL_CLASSES)} "
                        f"found in --weights-dir)")
    p.add_argument("--weights-dir", default="weights", help="folder holding one save_pretrained folder per model")
    p.add_argument("--revision-file", default="", help=f"where to record the commit (default: WEIGHTS_DIR/{PIN_FILE})")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--no-root-card", action="store_true", help="push the model folders only (no root README/LICENSE)")
    p.add_argument("--dry-run", action="store_true", help="verify the folders, show what would be written, push nothing")
    return p.parse_args(argv)


def main(argv=None) -> str | None:
    args = parse_args(argv)
    try:
        identity = identity_from_args(args, token=args.token)
    except IdentityError as e:
        sys.exit(f"not pushed: {e}")
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
    metrics_path = weights / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    render = card_renderer(weights, names, metrics, identity, root=not args.no_root_card)
    if args.dry_run:
        print("\n".join(identity.describe()))
        print(f"would push {', '.join(names)} to {identity.weights_repo}: the weights in one commit, then "
              f"{len(render('0' * 40))} cards and files in a second; the cards' \"Use\" snippet, e.g.:")
        from train.cards import use_snippet
        print(use_snippet(names[0], weights, published_as(identity, "<the weights commit>")))
        print("dry run: nothing pushed")
        return None

    weights_sha, sha = push_models({n: weights / n for n in names}, identity.weights_repo, render, token=args.token)
    print(f"weights of {', '.join(names)}: pushed to {identity.weights_repo} at commit {weights_sha}")
    print(f"cards pinned to it: commit {sha}")
    for path, text in render(weights_sha).items():  # the published cards, written back beside the weights
        if path.endswith("/README.md") and path.split("/")[0] in names:
            (weights / path).write_text(text, encoding="utf-8")
    pin_path = Path(args.revision_file) if args.revision_file else weights / PIN_FILE
    record_pin(pin_path, identity.weights_repo, sha, {n: weights_sha for n in names}, identity.source_url)
    print(f"recorded {identity.weights_repo}@{sha} in {pin_path}")
    return sha


def published_as(identity, revision: str):
    from train.cards import Published
    return Published(identity.weights_repo, revision, identity.source_url)


def card_renderer(weights: Path, names: list[str], metrics: dict, identity, root: bool = True):
    """revision -> {path in repo: text or file}: every named folder's card and (root=True) the root card and
    LICENSE, their "Use" snippets pinned to `revision`. Refuses a card that fails check_card or carries a
    placeholder id."""
    from train.cards import check_card, render_card, root_card

    def render(revision: str) -> dict:
        pub = published_as(identity, revision)
        files: dict = {f"{n}/README.md": text_of(render_card(n, weights, metrics.get(n) or {}, pub)) for n in names}
        if root:
            files["README.md"] = text_of(root_card(weights, metrics, pub))
            if (REPO_ROOT / "LICENSE").is_file():
                files["LICENSE"] = REPO_ROOT / "LICENSE"
        for path, text in files.items():
            if isinstance(text, str):
                problems = check_card(text) + [f"carries the placeholder {p!r}" for p in find_placeholders(text, identity)]
                if problems:
                    raise ValueError(f"the card {path} would not validate: {problems}")
        return files
    return render


def text_of(card) -> str:
    text = str(card)
    return text if text.endswith("\n") else text + "\n"


def cli() -> None:
    """Console-script entry point (`mnist-diffusion-push`): main's return value is not an exit code."""
    main()


if __name__ == "__main__":
    main()
