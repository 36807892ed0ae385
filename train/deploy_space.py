"""Deploy the app as a Hugging Face Space, in one commit holding exactly the files the Space needs.

    python -m train.deploy_space [USER/SPACE] [--hub-user USER] [--space NAME] [--weights-repo NAME|USER/NAME
                                 [--revision SHA]] [--source-url URL] [--private] [--token TOKEN] [--dry-run]

The names come from one place (diffusion/identity.py): the Space is the positional id, else --space /
MNIST_DIFFUSION_SPACE, else USER/mnist-diffusion-lab for --hub-user / MNIST_DIFFUSION_HUB_USER / the token's user.

Uploaded (`space_upload`, which `python -m train.rehearse_space` writes into a folder to try it): README.md (the
Space card: its front matter is checked first, `models:` names the weights repo when one is given, and every
relative link either points at an uploaded file or is rewritten: to the source repository when --source-url is
known, else to plain text), LICENSE, .gitattributes, space/requirements.txt *as* requirements.txt (CPU torch),
app.py, the `diffusion` and `ui` packages (sources and prose), ui/assets/*.npz, the pages and images the README
links to (docs/*.md, screenshots, bench/results/*.md), and weights/<name>/ (config.json, model.safetensors,
README.md, timelapse.safetensors) for every model folder present (with weights/metrics.json and hub.json), so the
Space starts without the Hub. Not uploaded: tests, training scripts and records, benchmark code and grids, run
directories. Files a previous deploy left in the Space that are no longer in this set are deleted in the same commit.

With --weights-repo the Space loads its models from that Hub repo at a pinned commit (--revision, else
the commit weights/hub.json records for that repo, else the repo's current head, resolved now) through
the Space variables HUB_REPO and HUB_REVISION, which app.py reads; the shipped weights stay the fallback.
The token comes from --token, HF_TOKEN or `hf auth login`.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
from pathlib import Path

from diffusion.hub_mixin import hub_endpoint
from diffusion.identity import ENV_WEIGHTS_REPO, add_identity_arguments, find_placeholders, identity_from_args
from diffusion.pinning import hub_pin

# the checkout this module lives in; installed as a package (no app.py beside it), the working directory
ROOT = Path(__file__).resolve().parent.parent
if not (ROOT / "app.py").is_file():
    ROOT = Path.cwd()
SPACE_REQUIREMENTS = "space/requirements.txt"
# (pattern relative to the checkout, path in the Space: None = the same)
SPACE_FILES: tuple[tuple[str, str | None], ...] = (
    ("README.md", None), ("LICENSE", None), (".gitattributes", None), ("app.py", None),
    (SPACE_REQUIREMENTS, "requirements.txt"),
    ("diffusion/**/*.py", None),
    ("ui/**/*.py", None), ("ui/**/*.md", None), ("ui/**/*.css", None), ("ui/**/*.js", None),
    ("ui/assets/*.npz", None),
    ("weights/*/config.json", None), ("weights/*/model.safetensors", None), ("weights/*/README.md", None),
    ("weights/*/timelapse.safetensors", None), ("weights/hub.json", None), ("weights/metrics.json", None),
)
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
# what a README link may bring along into the Space: pages and pictures, not code (code links go to the source)
LINKED_SUFFIXES = {".md", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
LINKED_MAX_BYTES = 5 * 1024 * 1024
# inline links and images, [text](target "title") / ![alt](target): (bang, text, target, rest)
LINK = re.compile(r'(!?)\[([^\]]*)\]\(([^)\s]+)((?:\s+"[^"]*")?)\)')

# The Hub's limits on a Space's front matter (https://huggingface.co/docs/hub/spaces-config-reference).
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SPACE_SDKS = {"gradio", "docker", "static"}   # the Hub retired the streamlit SDK for new Spaces
SHORT_DESCRIPTION_MAX = 60
CPU_HARDWARE = {"cpu-basic", "cpu-upgrade"}
LICENSE_FIRST_LINES = {"mit": "MIT License", "apache-2.0": "Apache License", "bsd-3-clause": "BSD 3-Clause License"}


def space_files(root: Path = ROOT) -> dict[str, Path]:
    """{path in the Space: file in the checkout} for every file the Space needs, README images included."""
    files: dict[str, Path] = {}
    for pattern, target in SPACE_FILES:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root)
            if path.is_file() and not SKIP_PARTS.intersection(rel.parts) and path.suffix != ".pyc":
                files[target or rel.as_posix()] = path
    readme = root / "README.md"
    if readme.is_file():
        for link in readme_links(readme.read_text(encoding="utf-8")):
            path = root / link
            if (path.is_file() and path.suffix.lower() in LINKED_SUFFIXES and path.stat().st_size <= LINKED_MAX_BYTES
                    and not SKIP_PARTS.intersection(Path(link).parts)):
                files.setdefault(link, path)
    if not files.get("requirements.txt"):
        raise FileNotFoundError(f"{root / SPACE_REQUIREMENTS} is missing: the Space needs its CPU-torch requirements")
    return files


def _relative(target: str) -> str | None:
    """The repo path a relative link points at (anchor and query dropped), None for URLs, anchors, absolute paths."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("/", "#")):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    path = os.path.normpath(path).replace(os.sep, "/")
    return None if not path or path.startswith("..") or path == "." else path


def readme_links(text: str) -> list[str]:
    """Repo paths of the README's relative links and images (`[text](path)`, `![alt](path)`)."""
    return sorted({p for _, _, target, _ in LINK.findall(text) if (p := _relative(target))})


def readme_images(text: str) -> list[str]:
    """Relative image paths the README shows (`![alt](path)`), which the Space page renders from the repo."""
    return sorted({p for bang, _, target, _ in LINK.findall(text) if bang and (p := _relative(target))})


def source_link(source_url: str, path: str, root: Path) -> str:
    """The page of `path` in the source repository (GitHub-style /blob/ and /tree/ at HEAD)."""
    base = source_url.removesuffix(".git").rstrip("/")
    return f"{base}/{'tree' if (root / path).is_dir() else 'blob'}/HEAD/{path}"


def rewrite_links(text: str, uploaded, root: Path, source_url: str | None) -> str:
    """Every relative link resolves on the Space: kept when it points at an uploaded file, else made absolute to
    the source repository, else (no source known) the link text stays and the link goes."""
    uploaded = set(uploaded)

    def fix(m: re.Match) -> str:
        bang, label, target, title = m.groups()
        path = _relative(target)
        if path is None or path in uploaded:
            return m.group(0)
        if source_url:
            anchor = target[len(target.split("#", 1)[0]):]
            return f"{bang}[{label}]({source_link(source_url, path, root)}{anchor}{title})"
        return "" if bang else label

    return LINK.sub(fix, text)


def dead_links(text: str, uploaded) -> list[str]:
    """Relative links of `text` that no uploaded file answers: what the Space page would show as broken."""
    uploaded = set(uploaded)
    return [p for p in readme_links(text) if p not in uploaded]


def front_matter(text: str) -> dict:
    from huggingface_hub import SpaceCard
    return SpaceCard(text).data.to_dict()


def check_space_card(text: str, root: Path = ROOT) -> list[str]:
    """Problems that would make the Hub reject (or misconfigure) this README as a Space card; [] when none."""
    try:
        meta = front_matter(text)
    except Exception as e:  # noqa: BLE001 - malformed YAML, or no front matter at all
        return [f"the front matter does not parse: {type(e).__name__}: {e}"]
    if not text.startswith("---"):
        return ["the README has no YAML front matter (a Space reads its configuration from it)"]
    problems = []
    for key in ("title", "sdk", "app_file", "license", "short_description"):
        if not meta.get(key):
            problems.append(f"`{key}` is missing")
    if meta.get("sdk") and meta["sdk"] not in SPACE_SDKS:
        problems.append(f"`sdk: {meta['sdk']}` is not one of {sorted(SPACE_SDKS)}")
    if meta.get("sdk") == "gradio" and not meta.get("sdk_version"):
        problems.append("`sdk_version` is missing (the gradio version the Space installs)")
    short = str(meta.get("short_description") or "")
    if len(short) > SHORT_DESCRIPTION_MAX:
        problems.append(f"`short_description` is {len(short)} characters; the Hub allows at most {SHORT_DESCRIPTION_MAX}")
    for key in ("colorFrom", "colorTo"):
        if meta.get(key) and meta[key] not in SPACE_COLORS:
            problems.append(f"`{key}: {meta[key]}` is not one of {sorted(SPACE_COLORS)}")
    if meta.get("suggested_hardware") not in CPU_HARDWARE:
        problems.append(f"`suggested_hardware` is {meta.get('suggested_hardware')!r}; this app runs on "
                        f"{' or '.join(sorted(CPU_HARDWARE))}")
    app_file = meta.get("app_file")
    if app_file and not (root / app_file).is_file():
        problems.append(f"`app_file: {app_file}` does not exist")
    models = meta.get("models")   # optional: the deploy names the weights repo when the Space loads from one
    if models is not None and (not models or not isinstance(models, list)):
        problems.append("`models:` must list the weight repo(s) the Space loads (or be left out)")
    elif models:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        for repo in models:
            try:
                validate_repo_id(str(repo))
                if "/" not in str(repo):
                    raise HFValidationError("no namespace")
            except HFValidationError:
                problems.append(f"`models:` entry {repo!r} is not a Hub repo id (USER/NAME)")
    problems += [f"the card carries the placeholder {p!r}" for p in find_placeholders(text)]
    lic = str(meta.get("license") or "")
    first = LICENSE_FIRST_LINES.get(lic)
    license_file = root / "LICENSE"
    if lic and not license_file.is_file():
        problems.append(f"`license: {lic}` but there is no LICENSE file")
    elif first and license_file.read_text(encoding="utf-8").strip().splitlines()[0].strip() != first:
        problems.append(f"`license: {lic}` but LICENSE does not start with {first!r}")
    return problems


def space_readme(text: str, weights_repo: str | None, uploaded=None, root: Path = ROOT,
                 source_url: str | None = None) -> str:
    """The README as uploaded: `models:` names the weights repo when the Space loads from one; with `uploaded`
    (the Space's paths), relative links are rewritten so that each resolves (`rewrite_links`)."""
    if uploaded is not None:
        head, sep, body = text.partition("\n---\n") if text.startswith("---") else ("", "", text)
        text = head + sep + rewrite_links(body, uploaded, Path(root), source_url)
    if not weights_repo:
        return text
    from huggingface_hub import SpaceCard
    card = SpaceCard(text)
    card.data.models = [weights_repo]
    return str(card)


def space_upload(root: Path = ROOT, weights_repo: str | None = None, source_url: str | None = None) -> dict:
    """{path in the Space: bytes (the rewritten README) or a file of the checkout}: exactly what a deploy uploads,
    after the checks a deploy makes (card, links, LFS routing); ValueError naming each problem."""
    root = Path(root)
    files: dict = dict(space_files(root))
    readme = space_readme((root / "README.md").read_text(encoding="utf-8"), weights_repo, files, root, source_url)
    problems = check_space_card(readme, root)
    problems += [f"the README links to {p}, which the Space would not have" for p in dead_links(readme, files)]
    if problems:
        raise ValueError("the Space card (README.md) would be rejected or broken:\n  " + "\n  ".join(problems))
    untracked_binaries = [p for p in files if not lfs_tracked(p, root)
                          and Path(p).suffix in (".safetensors", ".png", ".npz", ".gif", ".jpg")]
    if untracked_binaries:
        raise ValueError(f".gitattributes does not route {untracked_binaries} through LFS")
    files["README.md"] = readme.encode()
    return files


def write_space(folder: Path, files: dict) -> Path:
    """Write `space_upload`'s files into `folder` (which must be empty or absent), as the Space's repo will hold them."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty: the rehearsal builds the Space into an empty folder")
    for path, src in files.items():
        out = folder / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(src if isinstance(src, bytes) else Path(src).read_bytes())
    return folder


def resolve_weights_revision(weights_repo: str, revision: str | None, weights_dir: Path, token=None) -> str:
    """--revision, else the commit weights/hub.json pins for this repo, else the repo's head now: always a commit."""
    from huggingface_hub import HfApi
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    if not revision:
        pin = hub_pin(weights_dir)
        if pin.get("repo") == weights_repo and pin.get("revision"):
            return pin["revision"]
    info = HfApi(endpoint=hub_endpoint(), token=token).model_info(weights_repo, revision=revision or "main")
    return info.sha


def deploy(space_id: str, *, weights_repo: str | None = None, revision: str | None = None, root: Path = ROOT,
           token=None, private: bool | None = None, dry_run: bool = False, source_url: str | None = None,
           log=print) -> str | None:
    """Check, then upload the Space in one commit; returns its sha (None for a dry run)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    root = Path(root)
    files = space_upload(root, weights_repo, source_url)
    log(f"{len(files)} files for {space_id}" + (f" (models: {weights_repo})" if weights_repo else "") + ":")
    for p in files:
        log(f"  {p}")
    if dry_run:
        log("dry run: nothing uploaded")
        return None
    api = HfApi(endpoint=hub_endpoint(), token=token)
    pinned = resolve_weights_revision(weights_repo, revision, root / "weights", token) if weights_repo else None
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src if isinstance(src, bytes) else str(src))
           for p, src in files.items()]
    stale = sorted(set(api.list_repo_files(space_id, repo_type="space")) - set(files))
    ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
    info = api.create_commit(space_id, repo_type="space", operations=ops,
                             commit_message="Deploy mnist-diffusion-lab"
                                            + (f" (weights {weights_repo}@{pinned[:12]})" if pinned else ""))
    if weights_repo:
        api.add_space_variable(space_id, "HUB_REPO", weights_repo, description="weights repo the app loads")
        api.add_space_variable(space_id, "HUB_REVISION", pinned, description="pinned commit of HUB_REPO")
        log(f"the Space loads {weights_repo}@{pinned} (variables HUB_REPO, HUB_REVISION)")
    if stale:
        log(f"deleted from the Space: {', '.join(stale)}")
    log(f"deployed {space_id} at commit {info.oid}")
    return info.oid


def lfs_patterns(root: Path = ROOT) -> list[str]:
    """The patterns .gitattributes sends through LFS (`filter=lfs`)."""
    path = Path(root) / ".gitattributes"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def lfs_tracked(path: str, root: Path = ROOT) -> bool:
    """Whether `path` (relative, posix) matches an LFS pattern; a pattern without '/' matches the file name,
    as in git."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name if "/" not in pat else path, pat.lstrip("/"))
               for pat in lfs_patterns(root))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.deploy_space", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("space_id", nargs="?", default=None,
                   help="the Space, USER/NAME (created if missing; default: --space / the identity's)")
    add_identity_arguments(p)   # --weights-repo here: the Hub model repo the Space loads its weights from
    p.add_argument("--revision", default=None, help="commit (or branch/tag, resolved now) of --weights-repo to pin")
    p.add_argument("--private", action="store_true", default=None, help="create the Space private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--root", default=str(ROOT), help=f"the checkout to deploy (default {ROOT})")
    p.add_argument("--dry-run", action="store_true", help="check and list the files, upload nothing")
    args = p.parse_args(argv)
    args.weights_repo = args.weights_repo or os.environ.get(ENV_WEIGHTS_REPO) or None
    if args.revision and not args.weights_repo:
        p.error("--revision pins --weights-repo; give --weights-repo too")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        # the Space loads from the Hub only when a weights repo is configured (flag or environment)
        identity = identity_from_args(argparse.Namespace(**{**vars(args), "space": args.space_id or args.space}),
                                      token=args.token)
        if args.dry_run:
            print("\n".join(identity.describe()))
        deploy(identity.space, weights_repo=identity.weights_repo if args.weights_repo else None,
               revision=args.revision, root=Path(args.root), token=args.token, private=args.private,
               dry_run=args.dry_run, source_url=identity.source_url)
    except (ValueError, FileNotFoundError) as e:   # IdentityError is a ValueError
        print(f"not deployed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
