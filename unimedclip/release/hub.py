"""Uploads to the Hugging Face Hub, through functions that take any `HfApi`-like object (tests pass a fake).

`publish_model` checks that a model directory is complete before anything is uploaded, then uploads it in one commit
that includes its own README.md, so the repository carries our card and never the generic one that `push_to_hub`
writes into a repository without a card. `push_built_dataset`, behind the UniMed shards' `push_dataset_to_hub` and
the zero-shot benchmark's upload, verifies a built folder against its manifest, uploads exactly what the manifest
and card name, and refuses what may not be redistributed outside private repositories.
"""

import glob
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi

from ..data.manifest import MANIFEST, load_manifest, verify_output
from .dataset_card import LICENSE_FILE, README, gated_sources, render_card
from .model_files import missing_model_files

# Training leftovers that never belong in a model repository.
MODEL_IGNORE_PATTERNS = ["*.pt", "*.pth", "*.bin", "*.ckpt", "checkpoint*/*", "runs/*", "logs/*", "__pycache__/*"]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    commit_message: str = "Upload UniMed-CLIP",
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
    api: HfApi | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` (the files `allow_patterns` match, if given, less those
    `ignore_patterns` match) as one commit; returns the commit URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot push {folder}: not a directory.")
    api = api or HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=folder,
        commit_message=commit_message,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
    )
    return str(commit)


def publish_model(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str = "Upload UniMed-CLIP",
    api: HfApi | None = None,
) -> str:
    """Check that `folder` holds a complete UniMed-CLIP and its card, then upload it as one commit."""
    missing = missing_model_files(folder)
    if missing:
        raise FileNotFoundError(f"{folder} is not ready to publish; missing:\n  " + "\n  ".join(missing))
    return push_folder_to_hub(
        folder,
        repo_id,
        private=private,
        commit_message=commit_message,
        ignore_patterns=MODEL_IGNORE_PATTERNS,
        api=api,
    )


def is_public_repo(api: HfApi, repo_id: str) -> bool:
    """Whether `repo_id` exists and is public (a new one is created private by push_folder_to_hub)."""
    return api.repo_exists(repo_id, repo_type="dataset") and not api.repo_info(repo_id, repo_type="dataset").private


def push_built_dataset(
    output: Path,
    repo_id: str,
    *,
    withheld: list[str],
    refusal: str,
    render_card: Callable[[Path, str], object],
    commit_message: str,
    private: bool,
    allow_gated_in_private_repo: bool,
    api: HfApi | None,
) -> str:
    """Upload a built dataset folder (UniMed shards, or the zero-shot benchmark) as a dataset repository.

    `withheld` names what in it may not be redistributed: then nothing goes up unless the repository is private and
    `allow_gated_in_private_repo` is set (else PermissionError(`refusal`)), and never into an existing public
    repository. The folder is verified against its manifest, its card rendered with `render_card(output, repo_id)`,
    and exactly the card, LICENSE.md, the manifest and the files it lists are uploaded: never a stray folder or file
    that happens to sit beside them.
    """
    if withheld and not (private and allow_gated_in_private_repo):
        raise PermissionError(refusal)
    api = api or HfApi()
    if withheld and is_public_repo(api, repo_id):
        raise PermissionError(
            f"{repo_id} exists and is public; {', '.join(withheld)} may go only to a private repository."
        )
    verify_output(output)
    render_card(output, repo_id)
    files = [README, LICENSE_FILE, MANIFEST, *(entry["path"] for entry in load_manifest(output)["shards"])]
    return push_folder_to_hub(
        output,
        repo_id,
        repo_type="dataset",
        private=private,
        commit_message=commit_message,
        allow_patterns=[glob.escape(file) for file in files],
        api=api,
    )


def push_dataset_to_hub(
    output: Path,
    repo_id: str,
    *,
    private: bool = False,
    allow_gated_in_private_repo: bool = False,
    api: HfApi | None = None,
) -> str:
    """Verify a built UniMed folder against its manifest, render its card and upload it as a dataset repository.

    Shards of gated sources are refused unless the repository is private and `allow_gated_in_private_repo` is set,
    for users keeping their own build under their own access terms.
    """
    if load_manifest(output).get("format") != "webdataset":
        raise ValueError(
            f"{output} is not a UniMed shard build; a zero-shot benchmark build is uploaded with "
            "`unimedclip benchmark --output DIR --push-to-hub ORG/NAME`."
        )
    gated = gated_sources(output)
    refusal = (
        f"{output} holds shards of sources that may not be redistributed: {', '.join(gated)}. "
        "Build a folder without them for a shared repository; to keep your own build in a private repository "
        "pass private=True and allow_gated_in_private_repo=True (--private --allow-gated-in-private-repo)."
    )
    return push_built_dataset(
        output,
        repo_id,
        withheld=gated,
        refusal=refusal,
        render_card=render_card,
        commit_message="Upload UniMed shards",
        private=private,
        allow_gated_in_private_repo=allow_gated_in_private_repo,
        api=api,
    )
