"""Publish a UniMed-CLIP model directory or a UniMed dataset folder to the Hugging Face Hub.

    unimedclip card --model-dir DIR --repo-id ORG/NAME [--results results.json]
    unimedclip publish model DIR --repo-id ORG/NAME [--private]
    unimedclip publish dataset DIR --repo-id ORG/UniMed [--private --allow-gated-in-private-repo]

A model directory must hold config.json, the safetensors weights, the processor and tokenizer files, the remote code
its config names and its model card (README.md); whatever is missing is listed and nothing is uploaded. A dataset
folder built by dataset_scripts/build.py is verified against its manifest, its card is re-rendered, and shards of
sources that may not be redistributed go only to a private repository, and only when asked for.
"""

import argparse
from pathlib import Path

from .hub import publish_model, push_dataset_to_hub


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["model", "dataset"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument(
        "--allow-gated-in-private-repo",
        action="store_true",
        help="Dataset: allow shards of non-redistributable sources, to a private repository only.",
    )
    args = parser.parse_args(argv)

    try:
        if args.kind == "model":
            url = publish_model(args.folder, args.repo_id, private=args.private)
        else:
            url = push_dataset_to_hub(
                args.folder,
                args.repo_id,
                private=args.private,
                allow_gated_in_private_repo=args.allow_gated_in_private_repo,
            )
    except (FileNotFoundError, ValueError, PermissionError) as error:
        raise SystemExit(str(error)) from None
    print(f"Uploaded {args.folder} to {args.repo_id}: {url}")


if __name__ == "__main__":
    main()
