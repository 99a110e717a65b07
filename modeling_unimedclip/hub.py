"""Uploads to the Hugging Face Hub, through one function that takes any `HfApi`-like object."""

from pathlib import Path

from huggingface_hub import HfApi


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    commit_message: str = "Upload UniMed-CLIP",
    api: HfApi | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` as one commit; returns the commit URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"Cannot push {folder}: not a directory.")
    api = api or HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, commit_message=commit_message)
    return str(commit)
