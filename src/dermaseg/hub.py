"""Models on the Hugging Face Hub: `hf://owner/name` or `hf://owner/name@revision`.

A model folder (`dermaseg.model_folder`) uploaded with the hub's own command
(`hf upload owner/name my-model/`) is fetched with `huggingface_hub.snapshot_download` into the
hub's cache (HF_HOME, by default ~/.cache/huggingface); a later use finds it there, also
without network or with HF_HUB_OFFLINE=1. HF_ENDPOINT points at another hub (a mirror).
"""

from __future__ import annotations

import re
from pathlib import Path

from dermaseg.errors import DermasegError, UsageError

HUB_PREFIX = "hf://"
NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def parse_name(spec: str) -> tuple[str, str | None]:
    """"hf://owner/name@rev" -> ("owner/name", "rev"); no @: (repo, None).

    Raises:
        UsageError: not of the form hf://owner/name[@revision].
    """
    repo, _, revision = spec[len(HUB_PREFIX):].partition("@")
    if not NAME.fullmatch(repo) or ".." in repo or (_ and not revision):
        raise UsageError(f"{spec}: a hub model is named hf://owner/name or "
                         "hf://owner/name@revision")
    return repo, revision or None


def fetch_snapshot(spec: str, files: tuple[str, ...]) -> Path:
    """The local snapshot folder of the hub model `spec` (only `files` of it), downloaded
    when needed.

    Raises:
        DermasegError: naming the model: not on the hub (or private), no such revision, or
            neither the network nor the cache has it (with the command that fetches it).
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = parse_name(spec)
    fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(files)))
    except RevisionNotFoundError:
        raise DermasegError(f"{spec}: the hub has no revision {revision!r} of {repo}") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise DermasegError(f"{spec}: no model {repo} on the hub ({constants.ENDPOINT}), or "
                            "it is private or gated: log in with `hf auth login`") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise DermasegError(
            f"{spec}: cannot reach the hub ({constants.ENDPOINT}){offline} and the model is not "
            f"in the cache ({constants.HF_HUB_CACHE}); fetch it where there is network with "
            f"`{fetch}` (and copy that cache here), or download the folder and give its "
            f"path. ({_first_line(exc)})") from None
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
