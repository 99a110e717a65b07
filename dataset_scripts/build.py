"""Build UniMed WebDataset shards from raw source downloads, render the dataset card, optionally upload.

One source:
    python dataset_scripts/build.py --source chexpert --root RAW_DIR --annotations FILE_OR_DIR --output OUT_DIR \\
        [--shard-size 1000] [--shard-multiple 16] [--resize-short-side 512] [--num-proc 8]

Several sources, from a YAML (or JSON) file mapping source ids to their folders:
    python dataset_scripts/build.py --source all --config sources.yaml --output OUT_DIR
    # sources.yaml:  chexpert: {root: /data/CheXpert-v1.0-small, annotations: /data/unimed-annotations}

`--root` is the folder the annotation's image paths are relative to; `--annotations` the annotation file, or the
folder holding it under its published name (retina_flair: the `Retina-Annotations/` folder). Re-running the same
command resumes an interrupted build. Every run re-renders `README.md` for everything in OUT_DIR; with
`--push-to-hub REPO` the folder is then uploaded (gated sources only with `--private --allow-gated-in-private-repo`).
"""

import argparse
from pathlib import Path

import yaml

from dataset_scripts.card import push_dataset_to_hub, render_card
from dataset_scripts.shards import BuildSettings, build_source
from modeling_unimedclip.unimed_sources import SOURCES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="folder of the UniMed repository to build")
    parser.add_argument("--source", choices=[*SOURCES, "all"], help="source to build; omit to only render/upload")
    parser.add_argument("--root", type=Path, help="raw source folder (with --source <id>)")
    parser.add_argument("--annotations", type=Path, help="annotation file or folder (with --source <id>)")
    parser.add_argument("--config", type=Path, help="YAML {source: {root, annotations}} (with --source all)")
    parser.add_argument("--shard-size", type=int, default=1000, help="most samples per shard")
    parser.add_argument("--shard-multiple", type=int, default=16, help="shards per source and modality divide by it")
    parser.add_argument("--resize-short-side", type=int, help="resize and re-encode images with a longer short side")
    parser.add_argument("--num-proc", type=int, default=1, help="processes writing shards")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload OUT_DIR as this dataset repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument(
        "--allow-gated-in-private-repo",
        action="store_true",
        help="allow uploading shards of non-redistributable sources, to a private repository only",
    )
    args = parser.parse_args(argv)
    if args.source == "all" and args.config is None:
        parser.error("--source all needs --config.")
    if args.source not in (None, "all") and (args.root is None or args.annotations is None):
        parser.error(f"--source {args.source} needs --root and --annotations.")
    return args


def source_paths(args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    if args.source is None:
        return {}
    if args.source != "all":
        return {args.source: (args.root, args.annotations)}
    config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(config) - set(SOURCES))
    if unknown:
        raise ValueError(f"{args.config}: unknown source(s) {unknown}; known: {', '.join(SOURCES)}.")
    try:
        return {source: (Path(paths["root"]), Path(paths["annotations"])) for source, paths in config.items()}
    except (KeyError, TypeError):
        raise ValueError(f"{args.config}: every source needs `root` and `annotations`.") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = BuildSettings(args.shard_size, args.shard_multiple, args.resize_short_side)
    for source, (root, annotations) in source_paths(args).items():
        summary = build_source(source, root, annotations, args.output, settings, num_proc=args.num_proc)
        skipped = ", ".join(f"{count} {reason}" for reason, count in summary["skipped"].items()) or "none"
        print(f"{source}: {summary['samples']} samples in {summary['shards']} shards; skipped: {skipped}")
    render_card(args.output, args.push_to_hub)
    print(f"Wrote {args.output / 'README.md'} and {args.output / 'manifest.json'}")
    if args.push_to_hub:
        url = push_dataset_to_hub(
            args.output,
            args.push_to_hub,
            private=args.private,
            allow_gated_in_private_repo=args.allow_gated_in_private_repo,
        )
        print(f"Uploaded: {url}")


if __name__ == "__main__":
    main()
