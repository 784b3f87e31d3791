"""Publish a saved checkpoint directory to the Hugging Face Hub (``linearize push``).

Uploads through ``huggingface_hub`` with the user's token (``HF_TOKEN`` or ``hf auth login``);
the endpoint is ``HF_ENDPOINT`` when set (read when the push starts) or the public Hub. The local
directory is only read. Failures become one clear error:

* :class:`HubAuthError` (a :class:`LinearizeError`, exit 2): no token, or the Hub refused it (401/403);
* :class:`HubServerError` (exit 1): the Hub failed (5xx, after huggingface_hub's own bounded
  retries) or could not be reached. Nothing was committed in a failed step; running the same
  command again resumes (files already on the Hub unchanged are skipped).

Symbolic links: an upload reads through links, so a link in the directory to a file outside it
would publish that file. A push whose uploaded files include such a link (or a broken link) is
refused before anything is sent, with one :class:`LinearizeError` line listing every such link;
links that resolve to files inside the directory are uploaded as the files they point to.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import LinearizeError

# Never uploaded: hidden files (temporary files of atomic writes, .git), anything in a subdirectory (a
# checkpoint is flat; run directories may hold training checkpoints, optimizer states, logs), pickles.
IGNORE_PATTERNS = [".*", "*/*", "*.pyc", "*.pt", "*.pth", "*.pkl", "*.ckpt"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubAuthError(LinearizeError):
    """No token, or the Hub rejected it."""


class HubServerError(Exception):
    """The Hub answered with a server error or could not be reached."""


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str
    files: list[str]
    skipped: list[str]
    endpoint: str


def check_checkpoint_dir(model_dir: str | Path) -> Path:
    """A directory that looks like a saved model: config.json and safetensors weights."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise LinearizeError(f"not a directory: {path}")
    if not (path / "config.json").is_file():
        raise LinearizeError(f"{path}: not a saved model (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise LinearizeError(f"{path}: no .safetensors weights to publish")
    pickles = sorted(p.name for p in path.glob("*.bin"))
    if pickles:
        raise LinearizeError(
            f"{path}: refusing to publish pickle weights ({', '.join(pickles)}); re-save as safetensors"
        )
    check_symlinks(path)
    return path


def outside_links(path: Path) -> list[str]:
    """``"NAME -> TARGET"`` for each file a push would upload that is a link leading outside ``path``.

    Broken links and link loops count too (they lead to nothing inside the directory). Only
    top-level entries are uploaded (``IGNORE_PATTERNS``), so only those are looked at.
    """
    from huggingface_hub.utils import filter_repo_objects

    root = path.resolve()
    uploaded = set(filter_repo_objects([p.name for p in path.iterdir()], ignore_patterns=IGNORE_PATTERNS))
    found = []
    for entry in sorted(path.iterdir()):
        if entry.name not in uploaded or not entry.is_symlink():
            continue
        try:
            target = entry.resolve()
        except (OSError, RuntimeError):  # a link loop
            target = None
        if target is None or not target.exists() or not target.is_relative_to(root):
            found.append(f"{entry.name} -> {os.readlink(entry)}")
    return found


def check_symlinks(path: Path) -> None:
    """Refuse (one :class:`LinearizeError` line) a directory whose uploads include links to outside it."""
    links = outside_links(path)
    if links:
        raise LinearizeError(
            f"{path}: refusing to publish symbolic links to files outside the directory ({'; '.join(links)}): "
            "copy the files into the directory or remove the links"
        )


def resolve_endpoint(endpoint: str | None = None) -> str:
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _status(err) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _explain(err, step: str, endpoint: str, repo_id: str) -> Exception:
    """Turn a huggingface_hub / httpx error into HubAuthError, HubServerError or LinearizeError."""
    from huggingface_hub.errors import HfHubHTTPError

    status = _status(err)
    retry = "Nothing was changed locally; run the same command again to retry."
    if isinstance(err, HfHubHTTPError) and status is not None:
        server_message = getattr(err, "server_message", None) or ""
        detail = f" ({server_message.strip()})" if server_message.strip() else ""
        if status in (401, 403):
            return HubAuthError(
                f"the Hub at {endpoint} refused the token while {step} (HTTP {status}){detail}: check HF_TOKEN "
                f"or `hf auth login`, and that the token can write to {repo_id.split('/')[0]}"
            )
        if status >= 500:
            return HubServerError(f"the Hub at {endpoint} failed while {step} (HTTP {status}){detail}. {retry}")
        return LinearizeError(f"the Hub at {endpoint} rejected {step} (HTTP {status}){detail}")
    name = type(err).__name__
    if isinstance(err, OSError) or "Connect" in name or "Timeout" in name or "Network" in name:
        return HubServerError(f"could not reach the Hub at {endpoint} while {step}: {name}: {err}. {retry}")
    return err


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Create ``repo_id`` if needed (and branch ``revision``), then upload ``model_dir`` in one commit.

    Only the directory's top-level files are uploaded, except hidden files and pickles (see
    ``IGNORE_PATTERNS``); what was left out is listed in the result's ``skipped``.
    """
    path = check_checkpoint_dir(model_dir)
    if not REPO_ID.match(repo_id or ""):
        raise LinearizeError(f"--repo must look like ORG/NAME, got {repo_id!r}")
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise LinearizeError("HF_HUB_OFFLINE is set: unset it to push to the Hub")
    token = token or get_token()
    if not token:
        raise HubAuthError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    endpoint = resolve_endpoint(endpoint)
    from . import __version__

    api = HfApi(endpoint=endpoint, token=token, library_name="linearize", library_version=__version__)
    revision = revision or None
    step = f"creating {repo_id}"
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        if revision is not None and revision != constants.DEFAULT_REVISION:
            step = f"creating branch {revision} of {repo_id}"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        step = f"uploading {path} to {repo_id}"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=path,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {path.name} with linearize",
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except LinearizeError:
        raise
    except Exception as err:  # noqa: BLE001 - mapped to a clear error (or re-raised unchanged)
        raise _explain(err, step, endpoint, repo_id) from err
    from huggingface_hub.utils import filter_repo_objects

    present = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    files = sorted(filter_repo_objects(present, ignore_patterns=IGNORE_PATTERNS))
    return PushResult(
        repo_id=repo_id,
        revision=revision or constants.DEFAULT_REVISION,
        commit_url=getattr(info, "commit_url", str(info)),
        files=files,
        skipped=sorted(set(present) - set(files)),
        endpoint=endpoint,
    )
