"""Build UniMed WebDataset shards from raw source downloads, render the dataset card, optionally upload.

One of UniMed's sources:
    python dataset_scripts/build.py --source chexpert --root RAW_DIR --annotations FILE_OR_DIR --output OUT_DIR \\
        [--shard-size 1000] [--shard-multiple 16] [--resize-short-side 512] [--num-proc 8]

Several, from a YAML (or JSON) file mapping source ids to their folders:
    python dataset_scripts/build.py --source all --config sources.yaml --output OUT_DIR
    # sources.yaml:  chexpert: {root: /data/CheXpert-v1.0-small, annotations: /data/unimed-annotations}

A labelled dataset of your own, captioned by `dataset_scripts/caption.py`, as a source of one modality:
    python dataset_scripts/build.py --captions captions.jsonl --dataset <image folder | labels.csv | HF dataset> \\
        --modality xray --source-id my_chest_xrays [--license-class private] --output OUT_DIR

`--root` is the folder the annotation's image paths are relative to (paths leading outside it are refused and
counted); `--annotations` the annotation file, or the folder holding it under its published name (retina_flair: the
`Retina-Annotations/` folder). `--dataset` is what caption.py was given. Re-running the same command resumes an
interrupted build. Every run re-renders `README.md` for everything in OUT_DIR; with `--push-to-hub REPO` the folder
is then uploaded (gated sources only with `--private --allow-gated-in-private-repo`).
"""

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from dataset_scripts.images import FolderImages, images_of
from dataset_scripts.readers import READERS, read_captions
from dataset_scripts.shards import BuildSettings, build_source
from unimedclip.data.sources import LICENSE_CLASSES, PRIVATE, Source, captioned_source, get_source
from unimedclip.modalities import DATA_MODALITIES
from unimedclip.release.dataset_card import render_card
from unimedclip.release.hub import push_dataset_to_hub

LOCK_FILE = ".build.lock"


@contextlib.contextmanager
def build_lock(output: Path) -> Iterator[None]:
    """Hold `output` for one build at a time: two builds writing one manifest would lose shards. A second build is
    refused at once, with the holder's process id."""
    output.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = (output / f"{LOCK_FILE}.pid").read_text().strip() if (output / f"{LOCK_FILE}.pid").is_file() else "?"
        raise SystemExit(
            f"build.py: another build is writing to {output} (process {holder}); wait for it to finish, or build "
            "into another folder."
        ) from None
    try:
        (output / f"{LOCK_FILE}.pid").write_text(f"{os.getpid()}\n")
        yield
    finally:
        lock.release()


def build_registered(
    source_id: str, root: Path, annotations: Path, output: Path, settings: BuildSettings, num_proc: int = 1
) -> dict:
    """Build one of UniMed's own sources from its raw folder and annotation file."""
    return build_source(
        get_source(source_id), READERS[source_id](annotations), FolderImages(root), output, settings, num_proc
    )


def build_captioned(
    captions: Path,
    dataset: str,
    source: Source,
    output: Path,
    settings: BuildSettings,
    num_proc: int = 1,
    split: str = "train",
) -> dict:
    """Build a source of one's own from caption.py's output and the dataset it captioned."""
    return build_source(source, read_captions(captions, source), images_of(dataset, split), output, settings, num_proc)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True, help="folder of the UniMed repository to build")
    parser.add_argument(
        "--source", choices=[*READERS, "all"], help="UniMed source to build; omit to only render/upload"
    )
    parser.add_argument("--root", type=Path, help="raw source folder (with --source <id>)")
    parser.add_argument("--annotations", type=Path, help="annotation file or folder (with --source <id>)")
    parser.add_argument("--config", type=Path, help="YAML {source: {root, annotations}} (with --source all)")
    own = parser.add_argument_group("a source of your own (labelled images captioned by caption.py)")
    own.add_argument("--captions", type=Path, help="caption.py's output (JSON lines)")
    own.add_argument("--dataset", help="the image folder, CSV or Hugging Face dataset caption.py read")
    own.add_argument("--split", default="train", help="split of a Hugging Face --dataset")
    own.add_argument("--modality", choices=DATA_MODALITIES, help="the modality of its images")
    own.add_argument("--source-id", help="its id in the shards, e.g. my_chest_xrays")
    own.add_argument(
        "--license-class",
        choices=list(LICENSE_CLASSES),
        default=PRIVATE,
        help="who may download its images; only 'open' sources go to public repositories (default: private)",
    )
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
    if args.source is not None and args.captions is not None:
        parser.error("give --source (UniMed's sources) or --captions (a source of your own), not both.")
    if args.source == "all" and args.config is None:
        parser.error("--source all needs --config.")
    if args.source not in (None, "all") and (args.root is None or args.annotations is None):
        parser.error(f"--source {args.source} needs --root and --annotations.")
    if args.captions is not None:
        missing = [
            f"--{name.replace('_', '-')}" for name in ("dataset", "modality", "source_id") if not getattr(args, name)
        ]
        if missing:
            parser.error(f"--captions needs {', '.join(missing)}.")
        try:
            args.own_source = captioned_source(args.source_id, args.modality, args.license_class)
        except ValueError as error:
            parser.error(str(error))
    return args


def source_paths(args: argparse.Namespace) -> dict[str, tuple[Path, Path]]:
    if args.source is None:
        return {}
    if args.source != "all":
        return {args.source: (args.root, args.annotations)}
    config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(config) - set(READERS))
    if unknown:
        raise ValueError(f"{args.config}: unknown source(s) {unknown}; known: {', '.join(READERS)}.")
    try:
        return {source: (Path(paths["root"]), Path(paths["annotations"])) for source, paths in config.items()}
    except (KeyError, TypeError):
        raise ValueError(f"{args.config}: every source needs `root` and `annotations`.") from None


def report(source_id: str, summary: dict) -> None:
    skipped = ", ".join(f"{count} {reason}" for reason, count in summary["skipped"].items()) or "none"
    print(f"{source_id}: {summary['samples']} samples in {summary['shards']} shards; skipped: {skipped}")


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = parse_args(argv, prog)
    with build_lock(args.output):
        try:
            build(args)
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
            raise SystemExit(f"build.py: error: {error}") from None


def build(args: argparse.Namespace) -> None:
    settings = BuildSettings(args.shard_size, args.shard_multiple, args.resize_short_side)
    for source, (root, annotations) in source_paths(args).items():
        report(source, build_registered(source, root, annotations, args.output, settings, args.num_proc))
    if args.captions is not None:
        summary = build_captioned(
            args.captions, args.dataset, args.own_source, args.output, settings, args.num_proc, args.split
        )
        report(args.own_source.id, summary)
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
