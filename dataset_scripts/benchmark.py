"""Build the zero-shot benchmark dataset (the 21 test sets as a script-free Hub dataset) and upload it.

It packs the test sets from the original evaluation archive's folders into the dataset `evaluate_zero_shot.py --data`
reads (`unimedclip.evaluation.readers.BENCHMARK_REPO` on the Hub, or a local copy):

    unimedclip benchmark --data-root unimed-eval --output UniMed-CLIP-zero-shot-benchmark \\
        [--datasets PCAM NCK_CRC ...] [--redistributable-only] \\
        [--push-to-hub ORG/NAME [--private --allow-gated-in-private-repo]]

(also `python dataset_scripts/benchmark.py ...`). One config per catalog key, each a `test` split of Parquet files
`data/<key>/test-NNNNN-of-NNNNN.parquet` with the columns `image` (the image bytes exactly as the archive has them),
`label` (a ClassLabel in the catalog's class order) and `path` (the image's path under --data-root), in the order
the folders are evaluated in, so that both give the same numbers. Images that cannot be decoded, are missing, or lie
outside --data-root are skipped and counted. `manifest.json` lists every file with its sha256; `README.md` is the
card (configs, features, each config's modality and metric, every dataset's licence) and `LICENSE.md` the terms.

Rebuilding a dataset replaces its files; the others stay. Each dataset keeps its providers' licence (the catalog's
`origin`): only those that allow redistribution go to a public repository; the others are refused there, and go to a
private one only with --private --allow-gated-in-private-repo, for users keeping their own build under their terms.
"""

import argparse
import re
from collections import Counter
from pathlib import Path

import datasets
from datasets.arrow_writer import ParquetWriter
from datasets.utils.py_utils import convert_file_size_to_int
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from tqdm import tqdm

from dataset_scripts.build import build_lock
from dataset_scripts.images import OUTSIDE_ROOT, FolderImages, SkippedSample
from dataset_scripts.shards import encode_image
from unimedclip.data.manifest import MANIFEST, PARTIAL_SUFFIX, file_sha256, load_manifest, save_manifest
from unimedclip.evaluation.readers import (
    BENCHMARK_REPO,
    BENCHMARK_SPLIT,
    IMAGE_COLUMN,
    LABEL_COLUMN,
    PATH_COLUMN,
    catalog_dataset,
    load_catalog,
)
from unimedclip.modalities import MODALITIES
from unimedclip.paper import CITATION
from unimedclip.release.dataset_card import LICENSE_FILE, README, size_category
from unimedclip.release.hub import push_built_dataset

CARD_TEMPLATE = Path(__file__).with_name("benchmark_card_template.md")
FORMAT = "parquet"
MAX_FILE_BYTES = convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)  # as `push_to_hub` shards
# The files this builder writes into data/<key>/: the dataset's files, and files being written.
OWN_FILE = re.compile(rf"{BENCHMARK_SPLIT}-\d{{5}}(-of-\d{{5}}\.parquet|{re.escape(PARTIAL_SUFFIX)})")
METRIC_TITLES = {"accuracy": "top-1 accuracy", "auc": "ROC AUC"}


def features(classes: list[str]) -> datasets.Features:
    return datasets.Features(
        {
            IMAGE_COLUMN: datasets.Image(),
            LABEL_COLUMN: datasets.ClassLabel(names=classes),
            PATH_COLUMN: datasets.Value("string"),
        }
    )


def redistributable(entry: dict | None) -> bool:
    """Whether a catalog entry's licence allows hosting its images publicly (unknown datasets: no)."""
    return bool(entry and entry.get("origin", {}).get("redistributable"))


def write_test_set(key: str, entry: dict, data_root: Path, output: Path) -> list[dict]:
    """Pack one catalog dataset found under `data_root` into `output/data/<key>/`, replacing its previous build once
    the new one is complete; returns its manifest entries. A dataset whose files are missing raises FileNotFoundError
    (from the catalog's loader)."""
    samples = catalog_dataset(key, entry, data_root).samples
    folder = output / "data" / key
    folder.mkdir(parents=True, exist_ok=True)
    strays = sorted(path.name for path in folder.iterdir() if not OWN_FILE.fullmatch(path.name))
    if strays:
        raise ValueError(f"{folder} holds files this build did not write: {strays[:3]}; move them elsewhere first.")
    for partial in folder.glob(f"*{PARTIAL_SUFFIX}"):  # an interrupted build's
        partial.unlink()

    images, files, writer = FolderImages(data_root), [], None
    current = {"samples": 0, "image_bytes": 0, "skipped": Counter()}

    def close() -> None:
        _, current["num_bytes"] = writer.finalize()
        writer.close()
        files.append(current.copy())

    for sample in tqdm(samples, desc=f"{key}: packing", unit=" images"):
        try:
            reference = _reference(sample.image, data_root)
            data, _ = encode_image(images.read(reference), None)  # a full decode: unreadable images are skipped
        except SkippedSample as skip:
            current["skipped"][skip.reason] += 1
            continue
        if writer is not None and current["image_bytes"] >= MAX_FILE_BYTES:
            close()
            current = {"samples": 0, "image_bytes": 0, "skipped": Counter()}
            writer = None
        if writer is None:
            partial = folder / f"{BENCHMARK_SPLIT}-{len(files):05d}{PARTIAL_SUFFIX}"
            writer, current["partial"] = ParquetWriter(features=features(entry["classes"]), path=str(partial)), partial
        row = {IMAGE_COLUMN: {"bytes": data, "path": Path(reference).name}, LABEL_COLUMN: sample.label}
        writer.write({**row, PATH_COLUMN: reference})
        current["samples"] += 1
        current["image_bytes"] += len(data)
    if writer is None:
        raise ValueError(f"{key}: none of its {len(samples)} images could be packed ({dict(current['skipped'])}).")
    close()

    for previous in folder.glob("*.parquet"):
        previous.unlink()
    entries = []
    for index, file in enumerate(files):
        path = folder / f"{BENCHMARK_SPLIT}-{index:05d}-of-{len(files):05d}.parquet"
        file["partial"].replace(path)
        entries.append(
            {
                "path": str(path.relative_to(output)),
                "source": key,  # the manifest's "source" of a file: the test set it belongs to
                "modality": entry["modality"],
                "samples": file["samples"],
                "bytes": path.stat().st_size,
                "sha256": file_sha256(path),
                "num_bytes": file["num_bytes"],  # the decoded table's size, as `datasets` counts a split's bytes
                "skipped": dict(sorted(file["skipped"].items())),
            }
        )
    return entries


def _reference(image: Path, data_root: Path) -> str:
    """The image's path relative to `data_root`, as FolderImages reads it; outside `data_root` it is skipped."""
    try:
        return Path(image).relative_to(data_root).as_posix()
    except ValueError:
        raise SkippedSample(OUTSIDE_ROOT) from None


def build_benchmark(
    data_root: Path, output: Path, keys: list[str] | None = None, redistributable_only: bool = False
) -> dict[str, dict]:
    """Pack the catalog datasets `keys` (default: all) found under `data_root` into `output` and render its card.
    Returns the outcome per dataset: {"samples", "files", "skipped"}, {"missing": why} or {"failed": why}; one
    dataset's malformed files never cost the others."""
    catalog = load_catalog()
    unknown = sorted(set(keys or []) - set(catalog))
    if unknown:
        raise ValueError(f"Unknown dataset(s) {unknown}; the catalog has {sorted(catalog)}.")
    if not data_root.is_dir():
        raise NotADirectoryError(f"The evaluation archive folder {data_root} does not exist.")
    outcome = {}
    for key in keys or catalog:
        if redistributable_only and not redistributable(catalog[key]):
            outcome[key] = {"missing": f"its licence ({catalog[key]['origin']['license']}) does not allow hosting it"}
            continue
        try:
            entries = write_test_set(key, catalog[key], data_root, output)
        except FileNotFoundError as error:
            outcome[key] = {"missing": str(error)}
            continue
        except (ValueError, KeyError, IndexError) as error:
            outcome[key] = {"failed": f"{type(error).__name__}: {error}"}
            continue
        manifest = load_manifest(output)
        manifest["format"] = FORMAT
        manifest["shards"] = [entry for entry in manifest["shards"] if entry["source"] != key] + entries
        save_manifest(output, manifest)
        skipped = Counter()
        for entry in entries:
            skipped.update(entry["skipped"])
        outcome[key] = {"samples": sum(e["samples"] for e in entries), "files": len(entries), "skipped": dict(skipped)}
    if not load_manifest(output)["shards"]:
        reasons = "; ".join(f"{key}: {next(iter(line.values()))}" for key, line in list(outcome.items())[:3])
        raise FileNotFoundError(f"No dataset of the catalog could be packed from {data_root} ({reasons}; ...).")
    render_benchmark_card(output)
    return outcome


def render_benchmark_card(output: Path, repo_id: str | None = None) -> DatasetCard:
    """Write the card (`README.md`) and `LICENSE.md` of the benchmark build in `output`, and return the card."""
    manifest, catalog = load_manifest(output), load_catalog()
    if manifest.get("format") != FORMAT or not manifest["shards"]:
        raise ValueError(f"{output} holds no benchmark build; run `unimedclip benchmark --data-root DIR` first.")
    summaries = manifest["sources"]
    unknown = sorted(set(summaries) - set(catalog))
    if unknown:
        raise ValueError(f"{output}/{MANIFEST} lists datasets the catalog does not know: {unknown}.")
    included = [key for key in catalog if key in summaries]
    card_data = DatasetCardData(
        pretty_name="UniMed-CLIP zero-shot benchmark",
        language="en",
        license="other",
        license_name="per-dataset-terms",
        license_link=LICENSE_FILE,
        size_categories=size_category(sum(summary["samples"] for summary in summaries.values())),
        task_categories=["zero-shot-image-classification", "image-classification"],
        tags=["medical", "benchmark", "clip"],
        configs=[
            {
                "config_name": key,
                "data_files": [{"split": BENCHMARK_SPLIT, "path": f"data/{key}/{BENCHMARK_SPLIT}-*.parquet"}],
            }
            for key in included
        ],
        # `configs` entries become builder arguments, so each config's evaluation metadata has a key of its own.
        benchmark=[
            {
                "config_name": key,
                "modality": catalog[key]["modality"],
                "metric": catalog[key]["metric"],
                "also_report": catalog[key].get("also_report", []),
                "license": catalog[key]["origin"]["license"],
            }
            for key in included
        ],
    )
    datasets.info.DatasetInfosDict(
        {
            key: datasets.DatasetInfo(
                config_name=key,
                features=features(catalog[key]["classes"]),
                splits=datasets.SplitDict(
                    {
                        BENCHMARK_SPLIT: datasets.SplitInfo(
                            name=BENCHMARK_SPLIT,
                            num_examples=summaries[key]["samples"],
                            num_bytes=sum(e["num_bytes"] for e in manifest["shards"] if e["source"] == key),
                        )
                    }
                ),
                download_size=summaries[key]["bytes"],
            )
            for key in included
        }
    ).to_dataset_card_data(card_data)
    rows = [
        {
            "key": key,
            **entry["origin"],
            "modality": MODALITIES[entry["modality"]],
            "metric": METRIC_TITLES[entry["metric"]],
            "classes": len(entry["classes"]),
            "images": summaries.get(key, {}).get("samples"),
            "included": key in summaries,
        }
        for key, entry in catalog.items()
    ]
    card = DatasetCard.from_template(
        card_data,
        template_path=CARD_TEMPLATE,
        repo_hint=repo_id or BENCHMARK_REPO,
        included=included,
        total_images=sum(summary["samples"] for summary in summaries.values()),
        rows=rows,
        citation=CITATION,
    )
    card.save(output / README)
    (output / LICENSE_FILE).write_text(license_text(rows), encoding="utf-8")
    return card


def license_text(rows: list[dict]) -> str:
    lines = [
        "# UniMed-CLIP zero-shot benchmark: licences",
        "",
        "The benchmark has no licence of its own: every dataset keeps the terms of its providers, listed below.",
        "Only datasets whose licence allows redistribution are published; the others are built locally from one's",
        "own copy.",
        "",
        "| config | dataset | licence | in this copy | terms |",
        "|---|---|---|---|---|",
        *(
            f"| {row['key']} | {row['name']} | {row['license']} | {'yes' if row['included'] else 'no'} | "
            f"{row['homepage']} |"
            for row in rows
        ),
    ]
    return "\n".join(lines) + "\n"


def push_benchmark_to_hub(
    output: Path,
    repo_id: str,
    *,
    private: bool = False,
    allow_gated_in_private_repo: bool = False,
    api: HfApi | None = None,
) -> str:
    """Verify `output` against its manifest, render its card and upload exactly the card, `LICENSE.md`, the manifest
    and the files it lists. Datasets whose licence does not allow redistribution are refused unless the repository is
    private and `allow_gated_in_private_repo` is set."""
    catalog, manifest = load_catalog(), load_manifest(output)
    restricted = sorted(
        {entry["source"] for entry in manifest["shards"] if not redistributable(catalog.get(entry["source"]))}
    )
    refusal = (
        f"{output} holds datasets whose licence does not allow redistribution: {', '.join(restricted)}. Build a "
        "folder with --redistributable-only for a shared repository; to keep your own build in a private "
        "repository pass --private --allow-gated-in-private-repo."
    )
    return push_built_dataset(
        output,
        repo_id,
        withheld=restricted,
        refusal=refusal,
        render_card=render_benchmark_card,
        commit_message="Upload the UniMed-CLIP zero-shot benchmark",
        private=private,
        allow_gated_in_private_repo=allow_gated_in_private_repo,
        api=api,
    )


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True, help="folder of the benchmark dataset to build")
    parser.add_argument("--data-root", type=Path, help="the evaluation archive, laid out as the catalog says")
    parser.add_argument("--datasets", nargs="+", help="catalog keys to pack (default: all 21)")
    parser.add_argument(
        "--redistributable-only",
        action="store_true",
        help="pack only the datasets whose licence allows hosting them publicly",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help=f"upload OUTPUT as this dataset ({BENCHMARK_REPO})")
    parser.add_argument("--private", action="store_true", help="create the Hub repository private")
    parser.add_argument(
        "--allow-gated-in-private-repo",
        action="store_true",
        help="allow uploading datasets that may not be redistributed, to a private repository only",
    )
    args = parser.parse_args(argv)
    if args.data_root is None and args.push_to_hub is None:
        parser.error("give --data-root to build, --push-to-hub to upload, or both")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = parse_args(argv, prog)
    with build_lock(args.output):
        try:
            if args.data_root is not None:
                outcome = build_benchmark(args.data_root, args.output, args.datasets, args.redistributable_only)
                for key, line in outcome.items():
                    if "missing" in line:
                        print(f"{key}: skipped ({line['missing']})")
                    elif "failed" in line:
                        print(f"{key}: failed ({line['failed']})")
                    else:
                        skipped = ", ".join(f"{n} {reason}" for reason, n in line["skipped"].items()) or "none"
                        print(f"{key}: {line['samples']} images in {line['files']} file(s); skipped: {skipped}")
                print(f"Wrote {args.output / README} and {args.output / MANIFEST}")
            if args.push_to_hub:
                url = push_benchmark_to_hub(
                    args.output,
                    args.push_to_hub,
                    private=args.private,
                    allow_gated_in_private_repo=args.allow_gated_in_private_repo,
                )
                print(f"Uploaded: {url}")
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
            raise SystemExit(f"benchmark: error: {error}") from None
    failed = [key for key, line in outcome.items() if "failed" in line] if args.data_root is not None else []
    if failed:
        raise SystemExit(f"benchmark: {len(failed)} dataset(s) failed: {', '.join(failed)}.")


if __name__ == "__main__":
    main()
