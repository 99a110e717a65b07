"""The dataset card of a built UniMed folder (configs, declared features, per-source licences) and its upload."""

from pathlib import Path

from datasets import DatasetInfo, Features, Image, List, SplitDict, SplitInfo, Value
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from dataset_scripts.shards import load_manifest, verify_output
from modeling_unimedclip.hub import push_folder_to_hub
from modeling_unimedclip.model_card import CITATION
from modeling_unimedclip.unimed_sources import IMAGE_FIELD, MODALITIES, RECORD_FIELD, SOURCES

# Declared for every config: without them the webdataset builder would type `.image` members as raw bytes, and the
# `json` struct is fixed so that every source and modality yields the same columns.
FEATURES = Features(
    {
        IMAGE_FIELD: Image(),
        RECORD_FIELD: {
            "source": Value("string"),
            "modality": Value("string"),
            "captions": List(Value("string")),
            "report": Value("string"),
            "labels": List(Value("string")),
            "license": Value("string"),
            "path": Value("string"),
            "resized_from": List(Value("int32")),
        },
        "__key__": Value("string"),
        "__url__": Value("string"),
    }
)
ALL_CONFIG = "all"

CARD_TEMPLATE = Path(__file__).with_name("dataset_card_template.md")


def render_card(output: Path, repo_id: str | None = None) -> DatasetCard:
    """Write `README.md` for everything `manifest.json` lists in `output`, and return it."""
    manifest = load_manifest(output)
    if not manifest["shards"]:
        raise ValueError(f"{output} has no built shard; run dataset_scripts/build.py first.")
    counts = {modality: 0 for modality in MODALITIES}
    sizes = counts.copy()
    for entry in manifest["shards"]:
        counts[entry["modality"]] += entry["samples"]
        sizes[entry["modality"]] += entry["bytes"]
    modalities = [modality for modality in MODALITIES if counts[modality]]
    counts[ALL_CONFIG], sizes[ALL_CONFIG] = sum(counts.values()), sum(sizes.values())
    configs = [*modalities, ALL_CONFIG]

    card_data = DatasetCardData(
        pretty_name="UniMed",
        license="other",
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
    for source_id, source in SOURCES.items():
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
    card.save(output / "README.md")
    return card


def gated_sources(output: Path) -> list[str]:
    """Sources in `output` whose images may not be redistributed."""
    return [source for source in load_manifest(output)["sources"] if not SOURCES[source].redistributable]


def _is_public(api: HfApi, repo_id: str) -> bool:
    """Whether `repo_id` exists and is public (a new one is created private by push_folder_to_hub)."""
    return api.repo_exists(repo_id, repo_type="dataset") and not api.repo_info(repo_id, repo_type="dataset").private


def push_dataset_to_hub(
    output: Path,
    repo_id: str,
    *,
    private: bool = False,
    allow_gated_in_private_repo: bool = False,
    api: HfApi | None = None,
) -> str:
    """Verify `output` against its manifest, render its card and upload it as a dataset repository.

    Shards of gated sources are refused unless the repository is private and `allow_gated_in_private_repo` is set,
    for users keeping their own build under their own access terms.
    """
    gated = gated_sources(output)
    if gated and not (private and allow_gated_in_private_repo):
        raise PermissionError(
            f"{output} holds shards of sources that may not be redistributed: {', '.join(gated)}. "
            "Build a folder without them for a shared repository; to keep your own build in a private repository "
            "pass private=True and allow_gated_in_private_repo=True (--private --allow-gated-in-private-repo)."
        )
    api = api or HfApi()
    if gated and _is_public(api, repo_id):
        raise PermissionError(f"{repo_id} exists and is public; gated shards go only to a private repository.")
    verify_output(output)
    render_card(output, repo_id)
    return push_folder_to_hub(
        output, repo_id, repo_type="dataset", private=private, commit_message="Upload UniMed shards", api=api
    )
