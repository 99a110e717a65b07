"""Upload the app as a Hugging Face Space: the app's files at the Space's root, next to copies of the project's
packages, since a Space installs only PyPI requirements (requirements.txt) before running app.py.

    python app/publish.py --repo-id ORG/unimed-clip [--model ORG/unimed-clip-vit-b16] [--private]
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

APP = Path(__file__).resolve().parent
ROOT = APP.parent
SPACE_FILES = ("README.md", "requirements.txt", "app.py", "classify.py", "collection.py", "examples.py")
PACKAGES = ("modeling_unimedclip", "unimedclip", "dataset_scripts")
MODEL_VARIABLE = "UNIMEDCLIP_MODEL"


def stage_space(folder: Path) -> Path:
    """Lay the Space out in `folder`: the app's files and the packages, without caches."""
    for name in SPACE_FILES:
        shutil.copy2(APP / name, folder / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def publish_space(repo_id: str, *, model: str | None = None, private: bool = False, api: HfApi | None = None) -> str:
    """Create the Space if needed, upload the app in one commit and, with `model`, set the model it serves."""
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    if model is not None:
        api.add_space_variable(repo_id, MODEL_VARIABLE, model)
    with tempfile.TemporaryDirectory() as folder:
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=stage_space(Path(folder)),
            commit_message="Upload the UniMed-CLIP app",
            delete_patterns=["*"],  # a file the app no longer ships leaves the Space too
        )
    return str(commit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-id", required=True, help="The Space, ORG/NAME.")
    parser.add_argument("--model", help=f"The model the Space serves (its {MODEL_VARIABLE} variable).")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    print(publish_space(args.repo_id, model=args.model, private=args.private))


if __name__ == "__main__":
    main()
