"""Who publishes: the Hub user/org, the weights repo, the Space and the source repository, configured once.

Nothing committed names a Hub repository. `train.push` and `train.deploy_space` (and through them the model
cards' "Use" snippets, the root card and the Space's `models:`) take the names from here, first found wins:

1. the command line: --hub-user, --weights-repo, --space, --source-url;
2. the environment: MNIST_DIFFUSION_HUB_USER, MNIST_DIFFUSION_WEIGHTS_REPO, MNIST_DIFFUSION_SPACE,
   MNIST_DIFFUSION_SOURCE_URL;
3. the user or org the Hub token belongs to (`HfApi.whoami`), with the default repo names
   `mnist-diffusion-lab-weights` (weights) and `mnist-diffusion-lab` (Space).

A repo given without a namespace ("my-weights") goes under the user; with no user given, the namespace of the
other repo when that one is a full id. The source URL (a git repository people
can `pip install git+...` from) has no default: without it the snippets say to install from a checkout.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

ENV_USER = "MNIST_DIFFUSION_HUB_USER"
ENV_WEIGHTS_REPO = "MNIST_DIFFUSION_WEIGHTS_REPO"
ENV_SPACE = "MNIST_DIFFUSION_SPACE"
ENV_SOURCE_URL = "MNIST_DIFFUSION_SOURCE_URL"
DEFAULT_WEIGHTS_NAME = "mnist-diffusion-lab-weights"
DEFAULT_SPACE_NAME = "mnist-diffusion-lab"


class IdentityError(ValueError):
    """The Hub identity is missing or malformed; the message names the flag and the variable that set it."""


@dataclass(frozen=True)
class Identity:
    """The repository ids one push or deploy writes to (USER/NAME each) and where the code lives (or None)."""
    weights_repo: str
    space: str
    source_url: str | None = None

    def describe(self) -> list[str]:
        """What a dry run prints: the names that would be written."""
        return [f"weights repo: {self.weights_repo}", f"Space:        {self.space}",
                f"source:       {self.source_url or '(none: snippets say to install from a checkout)'}"]


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """The four identity flags, each defaulting to its environment variable (read when parsed)."""
    group = parser.add_argument_group("identity (one place: these flags, else the environment, else the token)")
    group.add_argument("--hub-user", default=None, help=f"Hub user or org that owns the repos (env {ENV_USER}; "
                                                        f"default: the token's user)")
    group.add_argument("--weights-repo", default=None, help=f"weights model repo, NAME or USER/NAME (env "
                                                            f"{ENV_WEIGHTS_REPO}; default USER/{DEFAULT_WEIGHTS_NAME})")
    group.add_argument("--space", default=None, help=f"the Space, NAME or USER/NAME (env {ENV_SPACE}; "
                                                     f"default USER/{DEFAULT_SPACE_NAME})")
    group.add_argument("--source-url", default=None, help=f"https URL of the source git repository, for the cards' "
                                                          f"install line (env {ENV_SOURCE_URL}; default none)")


def _check_repo_id(repo_id: str, what: str, flag: str, env: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise IdentityError(f"{what} {repo_id!r} is not a Hub repo id (USER/NAME): {e}; set {flag} or {env}") from None
    return repo_id


def _whoami(token) -> str | None:
    from huggingface_hub import HfApi

    from .hub_mixin import hub_endpoint
    try:
        return HfApi(endpoint=hub_endpoint(), token=token).whoami()["name"]
    except Exception:  # noqa: BLE001 - no token, no network: the caller says what to set instead
        return None


def resolve_identity(user: str | None = None, weights_repo: str | None = None, space: str | None = None,
                     source_url: str | None = None, *, token=None, ask_hub: bool = True) -> Identity:
    """The identity from arguments, else the environment, else the token's user (`ask_hub`); IdentityError
    naming the flag and the variable when a name is needed and none is found."""
    env = os.environ
    user = user or env.get(ENV_USER) or None
    weights_repo = weights_repo or env.get(ENV_WEIGHTS_REPO) or DEFAULT_WEIGHTS_NAME
    space = space or env.get(ENV_SPACE) or DEFAULT_SPACE_NAME
    source_url = source_url or env.get(ENV_SOURCE_URL) or None
    if source_url and not source_url.startswith("https://"):
        raise IdentityError(f"--source-url / {ENV_SOURCE_URL} must be an https URL, not {source_url!r}")
    if ("/" not in weights_repo or "/" not in space) and not user:
        full = [r for r in (weights_repo, space) if "/" in r]
        user = full[0].split("/", 1)[0] if full else (_whoami(token) if ask_hub else None)
        if not user:
            raise IdentityError(f"no Hub user: give --hub-user (or {ENV_USER}), or full ids with --weights-repo / "
                                f"--space (or {ENV_WEIGHTS_REPO} / {ENV_SPACE}), or log in (`hf auth login`, HF_TOKEN) "
                                f"so the token's user is used")
    weights_repo = weights_repo if "/" in weights_repo else f"{user}/{weights_repo}"
    space = space if "/" in space else f"{user}/{space}"
    return Identity(_check_repo_id(weights_repo, "the weights repo", "--weights-repo", ENV_WEIGHTS_REPO),
                    _check_repo_id(space, "the Space", "--space", ENV_SPACE), source_url.rstrip("/") if source_url else None)


def identity_from_args(args: argparse.Namespace, *, token=None, ask_hub: bool = True) -> Identity:
    return resolve_identity(args.hub_user, args.weights_repo, args.space, args.source_url, token=token, ask_hub=ask_hub)


# What a card, a README or a pin must never carry: the ids this project once committed as stand-ins.
PLACEHOLDERS = ("COMMIT_SHA", "USER/NAME", "USER/REPO", "mnist-diffusion-lab/mnist-diffusion-lab-weights",
                "github.com/mnist-diffusion-lab/")


def find_placeholders(text: str, identity: Identity | None = None) -> list[str]:
    """The placeholder ids in `text` (none that `identity` really uses): what a push or deploy refuses to publish."""
    real = {identity.weights_repo, identity.space, identity.source_url or ""} if identity else set()
    return [p for p in PLACEHOLDERS if p in text and not any(p in r for r in real)]
