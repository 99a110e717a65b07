"""The dataset card of a built UniMed folder: configs, declared features, counts and per-source licences."""

from pathlib import Path

from datasets import DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from ..data.manifest import load_manifest, sources_of
from ..data.records import FEATURES
from ..data.sources import SOURCES
from ..modalities import DATA_MODALITIES
from ..paper import CITATION

ALL_CONFIG = "all"
README = "README.md"  # the card
LICENSE_FILE = "LICENSE.md"  # the per-source terms that `license: other` points to

CARD_TEMPLATE = Path(__file__).with_name("dataset_card_template.md")


def size_category(samples: int) -> str:
    """The Hub's `size_categories` bucket of a sample count."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    bounds += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((name for bound, name in bounds if samples < bound), "n>1B")


def render_card(output: Path, repo_id: str | None = None) -> DatasetCard:
    """Write the card (`README.md`, and the `LICENSE.md` it links to) for everything `manifest.json` lists in
    `output`, and return it."""
    manifest = load_manifest(output)
    if not manifest["shards"]:
        raise ValueError(f"{output} has no built shard; run dataset_scripts/build.py first.")
    counts = {modality: 0 for modality in DATA_MODALITIES}
    sizes = counts.copy()
    for entry in manifest["shards"]:
        counts[entry["modality"]] += entry["samples"]
        sizes[entry["modality"]] += entry["bytes"]
    modalities = [modality for modality in DATA_MODALITIES if counts[modality]]
    counts[ALL_CONFIG], sizes[ALL_CONFIG] = sum(counts.values()), sum(sizes.values())
    configs = [*modalities, ALL_CONFIG]

    card_data = DatasetCardData(
        pretty_name="UniMed",
        language="en",
        license="other",
        license_name="unimed-per-source-terms",
        license_link=LICENSE_FILE,
        size_categories=size_category(counts[ALL_CONFIG]),
        task_categories=["zero-shot-image-classification", "image-to-text"],
        tags=["medical", "webdataset", "clip"],
        configs=[
            {
                "config_name": config,
                "data_files": [{"split": "train", "path": f"data/{'*' if config == ALL_CONFIG else config}/*.tar"}],
                **({"default": True} if config == ALL_CONFIG else {}),
            }
            for config in configs
        ],
    )
    DatasetInfosDict(
        {
            config: DatasetInfo(
                config_name=config,
                features=FEATURES,
                splits=SplitDict(
                    {"train": SplitInfo(name="train", num_examples=counts[config], num_bytes=sizes[config])}
                ),
                download_size=sizes[config],
            )
            for config in configs
        }
    ).to_dataset_card_data(card_data)

    rows = []
    for source_id, source in {**SOURCES, **sources_of(manifest)}.items():
        summary = manifest["sources"].get(source_id)
        rows.append(
            {
                "name": source.name,
                "modalities": ", ".join(summary["modalities"]) if summary else source.modality,
                "samples": summary["samples"] if summary else "not included",
                "skipped": sum(summary["skipped"].values()) if summary else "",
                "license": source.license_class,
                "hostable": "yes" if source.redistributable else "no",
                "homepage": source.homepage,
            }
        )
    settings = manifest["settings"].values()
    card = DatasetCard.from_template(
        card_data,
        template_path=CARD_TEMPLATE,
        repo_hint=repo_id or "<namespace>/unimed",
        total_samples=counts[ALL_CONFIG],
        total_shards=len(manifest["shards"]),
        configs=configs,
        sources=rows,
        shard_multiples=sorted({setting["shard_multiple"] for setting in settings}),
        shard_sizes=sorted({setting["shard_size"] for setting in settings}),
        citation=CITATION,
    )
    card.save(output / README)
    (output / LICENSE_FILE).write_text(license_text(rows), encoding="utf-8")
    return card


def license_text(rows: list[dict]) -> str:
    """Every source keeps its own terms; only `open` ones may be re-hosted."""
    lines = [
        "# UniMed: licences",
        "",
        "UniMed has no licence of its own: each sample keeps the terms of its source, listed below and in each",
        "record's `license` field. Only sources of class `open` may be re-hosted; the others must be downloaded from",
        "their providers under their terms.",
        "",
        "| source | licence class | may be hosted publicly | terms |",
        "|---|---|---|---|",
        *(f"| {row['name']} | {row['license']} | {row['hostable']} | {row['homepage']} |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def gated_sources(output: Path) -> list[str]:
    """Sources in `output` whose images may not be redistributed."""
    return [source.id for source in sources_of(load_manifest(output)).values() if not source.redistributable]
