"""Uploads to the Hugging Face Hub, through functions that take any `HfApi`-like object.

`publish_model` checks that a model directory is complete before anything is uploaded, then uploads it in one commit
that includes its own README.md, so the repository carries our card and never the generic one that `push_to_hub`
writes into a repository without a card. Dataset folders are checked and uploaded by
`dataset_scripts.card.push_dataset_to_hub`.
"""

import json
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from transformers.dynamic_module_utils import get_relative_imports

from .model_card import weight_files

# Training leftovers that never belong in a model repository.
MODEL_IGNORE_PATTERNS = ["*.pt", "*.pth", "*.bin", "*.ckpt", "checkpoint*/*", "runs/*", "logs/*", "__pycache__/*"]


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    commit_message: str = "Upload UniMed-CLIP",
    ignore_patterns: list[str] | None = None,
    api: HfApi | None = None,
) -> str:
    """Create `repo_id` if needed and upload `folder` as one commit; returns the commit URL."""
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
        ignore_patterns=ignore_patterns,
    )
    return str(commit)


def missing_model_files(folder: str | Path) -> list[str]:
    """What a model directory lacks to load with the auto classes and show our card; empty when complete."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return ["config.json"]
    missing = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        missing += [f"{path.name} (listed in {index.name})" for path in weight_files(folder) if not path.is_file()]
    elif not weight_files(folder):
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    for name in ("processor_config.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            missing.append(name)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    missing += [f"{name} (remote code)" for name in remote_code_files(folder) if not (folder / name).is_file()]
    readme = folder / "README.md"
    if not readme.is_file() or not ModelCard.load(readme).data.license:
        missing.append("README.md with metadata (python -m modeling_unimedclip.model_card --model-dir ...)")
    return missing


def remote_code_files(folder: Path) -> list[str]:
    """The modules `auto_map` in config.json names, and every module they import relatively, as file names."""
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map", {})
    pending = sorted({reference.split(".")[0] + ".py" for reference in auto_map.values()})
    found: list[str] = []
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.append(name)
        if (folder / name).is_file():
            pending += [f"{module}.py" for module in get_relative_imports(folder / name)]
    return sorted(found)


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
