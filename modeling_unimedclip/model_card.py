"""Model cards for UniMed-CLIP checkpoints, rendered from what the checkpoint and its evaluation files say.

    python -m modeling_unimedclip.model_card --model-dir DIR --repo-id ORG/NAME [--results results.json] \
        [--training training.json] [--converted-from UzairK/unimed-clip-vit-b16]    # writes DIR/README.md
    python -m modeling_unimedclip.model_card --released model_cards/               # the three released variants

The architecture comes from `config.json`, the parameter count from the safetensors headers (no weights are loaded),
evaluation numbers only from a `results.json` written by `evaluate_zero_shot.py`. Without one, the card says that
evaluation is pending and shows only the averages reported in the paper, labelled as such.
"""

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from .configuration_unimedclip import VARIANTS, UniMedCLIPConfig
from .modeling_unimedclip import UniMedCLIPModel
from .unimed_sources import SOURCES

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")

# Hub namespace of the transformers-native release; the released cards in model_cards/ are rendered for it.
RELEASE_NAMESPACE = "unimed-clip"
# The paper, for the model cards and the dataset card.
CITATION = """@article{khattak2024unimed,
  title={UniMed-CLIP: Towards a Unified Image-Text Pretraining Paradigm for Diverse Medical Imaging Modalities},
  author={Khattak, Muhammad Uzair and Kunhimon, Shahina and Naseer, Muzammal and Khan, Salman and Khan, Fahad Shahbaz},
  journal={arXiv preprint arXiv:2412.10372},
  year={2024}
}"""
# The original authors' checkpoints (open_clip training files) that `convert.py` turns into the released repos.
ORIGINAL_CHECKPOINTS = {
    "b16": "UzairK/unimed-clip-vit-b16",
    "l14-336-base": "UzairK/unimed_clip_vit_l14_base_text_encoder",
    "l14-336-large": "UzairK/unimed_clip_vit_l14_large_text_encoder",
}

# Initialisation of each tower in the original recipe, keyed by (patch size, width, layers) and (width, layers).
VISION_BASE_MODELS = {(16, 768, 12): "facebook/metaclip-b16-400m", (14, 1024, 24): "facebook/metaclip-l14-400m"}
TEXT_BASE_MODELS = {
    (768, 12): "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
    (1024, 24): "microsoft/BiomedNLP-BiomedBERT-large-uncased-abstract",
}

# Zero-shot averages reported in the paper / original README (21 datasets; per modality only for B/16).
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "b16": {
        "xray": 68.78,
        "ct": 85.54,
        "mri": 68.83,
        "ultrasound": 68.64,
        "pathology": 59.96,
        "fundus": 31.23,
        "average": 61.63,
    },
    "l14-336-base": {"average": 64.84},
    "l14-336-large": {"average": 62.09},
}
VARIANT_TITLES = {
    "b16": "ViT-B/16, BiomedBERT-base",
    "l14-336-base": "ViT-L/14-336, BiomedBERT-base",
    "l14-336-large": "ViT-L/14-336, BiomedBERT-large",
}
EVAL_MODALITIES = {
    "xray": "X-ray",
    "ct": "CT",
    "mri": "MRI",
    "ultrasound": "Ultrasound",
    "pathology": "Histopathology",
    "fundus": "Fundus",
}
TAGS = ["medical", "radiology", "x-ray", "ct", "mri", "ultrasound", "histopathology", "fundus", "clip", "zero-shot"]
# Public example images for the zero-shot widget, the ones BiomedCLIP's model card uses.
WIDGET = [
    {
        "src": "https://upload.wikimedia.org/wikipedia/commons/5/57/Left-sided_Pleural_Effusion.jpg",
        "candidate_labels": "chest X-ray showing left-sided pleural effusion, chest X-ray showing right-sided pleural "
        "effusion, normal chest X-ray",
        "example_title": "Chest X-ray",
    },
    {
        "src": "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/resolve/main/"
        "example_data/biomed_image_classification_example_data/squamous_cell_carcinoma_histopathology.jpeg",
        "candidate_labels": "adenocarcinoma histopathology, squamous cell carcinoma histopathology",
        "example_title": "Histopathology",
    },
]
CAPTIONS = {
    "random_of_first_10": "LLM captions of the labels",
    "report_else_random_of_first_10": "report, else LLM captions",
    "first": "the source's caption",
}
ACCESS = {
    "open": "open download",
    "registration": "free, after registration or request",
    "research-agreement": "research use agreement",
    "credentialed": "PhysioNet credentialed access and data use agreement",
}


@dataclass(frozen=True)
class Architecture:
    """What a card says about a checkpoint's shape, read from its configuration."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    projection_dim: int
    parameters: int

    @property
    def variant(self) -> str | None:
        """The released variant with these dimensions, if any."""
        for name, preset in VARIANTS.items():
            vision, text = preset["vision_config"], preset["text_config"]
            if (
                (self.image_size, self.patch_size, self.vision_width, self.vision_layers)
                == (vision["image_size"], vision["patch_size"], vision["hidden_size"], vision["num_hidden_layers"])
                and (self.text_width, self.text_layers) == (text["hidden_size"], text["num_hidden_layers"])
                and self.projection_dim == preset["projection_dim"]
            ):
                return name
        return None

    @property
    def vision_base_model(self) -> str | None:
        return VISION_BASE_MODELS.get((self.patch_size, self.vision_width, self.vision_layers))

    @property
    def text_base_model(self) -> str | None:
        return TEXT_BASE_MODELS.get((self.text_width, self.text_layers))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], parameters: int) -> "Architecture":
        vision, text = config["vision_config"], config["text_config"]
        return cls(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            vision_width=vision["hidden_size"],
            vision_layers=vision["num_hidden_layers"],
            text_width=text["hidden_size"],
            text_layers=text["num_hidden_layers"],
            projection_dim=config["projection_dim"],
            parameters=parameters,
        )

    @classmethod
    def from_directory(cls, model_dir: str | Path) -> "Architecture":
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        return cls.from_config(config, count_parameters(model_dir))

    @classmethod
    def from_variant(cls, variant: str) -> "Architecture":
        """A released variant's shape; parameters counted on a meta-device model (no memory, no weights)."""
        config = UniMedCLIPConfig.from_variant(variant)
        with torch.device("meta"):
            parameters = UniMedCLIPModel(config).num_parameters()
        return cls.from_config(config.to_dict(), parameters)


def weight_files(model_dir: str | Path) -> list[Path]:
    """`model.safetensors`, or the shards its index lists; an empty list when neither exists."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return [model_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []


def count_parameters(model_dir: str | Path) -> int:
    """Number of weights in the safetensors files of `model_dir`, from their headers."""
    files = weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir} has no model.safetensors or model.safetensors.index.json.")
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total


def load_results(path: str | Path) -> dict:
    """A zero-shot `results.json` from `evaluate_zero_shot.py`, checked to hold what the card shows."""
    report = json.loads(Path(path).read_text())
    missing = [key for key in ("results", "summary", "model_index") if key not in report]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}: the card needs a zero-shot results.json written by evaluate_zero_shot.py."
        )
    return report


def restricted_share() -> int:
    """Percentage of UniMed pairs from sources that may not be redistributed."""
    restricted = sum(source.pairs for source in SOURCES.values() if not source.redistributable)
    return round(100 * restricted / sum(source.pairs for source in SOURCES.values()))


def render_model_card(
    architecture: Architecture,
    *,
    repo_id: str,
    results: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    converted_from: str | None = None,
    datasets: Sequence[str] = (),
) -> ModelCard:
    """The card of a checkpoint with this architecture, published as `repo_id`.

    `results`: a zero-shot `results.json` (see `load_results`); `training`: settings of the run that produced the
    weights (shown as a table); `converted_from`: the original checkpoint the weights were converted from;
    `datasets`: Hub datasets the weights were trained on.
    """
    name = repo_id.split("/")[-1]
    towers = [model for model in (architecture.vision_base_model, architecture.text_base_model) if model]
    if converted_from:  # the original weights were trained on UniMed: name its sources that are Hub datasets
        hub_prefix = "https://huggingface.co/datasets/"
        datasets = [
            *datasets,
            *(s.homepage.removeprefix(hub_prefix) for s in SOURCES.values() if s.homepage.startswith(hub_prefix)),
        ]
    prompts = (results or {}).get("config", {}).get("prompts")
    card_data = ModelCardData(
        model_name=name if results else None,  # only needed, and only written, with a model-index
        language="en",
        license="cc-by-nc-4.0",
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=towers or None,
        datasets=list(dict.fromkeys(datasets)) or None,
        tags=TAGS,
        metrics=sorted({entry["metric_type"] for entry in results["model_index"]}) if results else None,
        eval_results=[EvalResult(**entry) for entry in results["model_index"]] if results else None,
        widget=WIDGET,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        name=name,
        repo_id=repo_id,
        arch=architecture,
        variant=architecture.variant,
        converted_from=converted_from,
        training=training,
        results=results,
        eval_modalities=EVAL_MODALITIES,
        paper_results=PAPER_RESULTS,
        citation=CITATION,
        variant_titles=VARIANT_TITLES,
        sources=list(SOURCES.values()),
        captions=CAPTIONS,
        access=ACCESS,
        restricted_share=restricted_share(),
        prompt_set=Path(prompts).name if prompts else None,
    )


def model_card_for_directory(
    model_dir: str | Path,
    *,
    repo_id: str,
    results_path: str | Path | None = None,
    training: Mapping[str, Any] | None = None,
    converted_from: str | None = None,
    datasets: Sequence[str] = (),
) -> ModelCard:
    """The card of the saved model in `model_dir`; write it with `.save(Path(model_dir) / "README.md")`."""
    return render_model_card(
        Architecture.from_directory(model_dir),
        repo_id=repo_id,
        results=load_results(results_path) if results_path else None,
        training=training,
        converted_from=converted_from,
        datasets=datasets,
    )


def released_cards() -> dict[str, ModelCard]:
    """Cards of the three released variants, by file name, before any evaluation of the converted weights."""
    cards = {}
    for variant, original in ORIGINAL_CHECKPOINTS.items():
        name = f"unimed-clip-vit-{variant}"
        cards[f"{name}.md"] = render_model_card(
            Architecture.from_variant(variant), repo_id=f"{RELEASE_NAMESPACE}/{name}", converted_from=original
        )
    return cards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-dir", type=Path, help="Saved model; the card is written to DIR/README.md.")
    target.add_argument("--released", type=Path, metavar="DIR", help="Write the three released variants' cards.")
    parser.add_argument("--repo-id", help="Hub repository the model is published as (with --model-dir).")
    parser.add_argument("--results", type=Path, help="results.json from evaluate_zero_shot.py.")
    parser.add_argument("--training", type=Path, help="JSON object of training settings to show.")
    parser.add_argument("--converted-from", help="Original checkpoint repository the weights were converted from.")
    parser.add_argument("--dataset", action="append", default=[], help="Hub dataset trained on (repeatable).")
    parser.add_argument("--output", type=Path, help="Where to write the card (default DIR/README.md).")
    args = parser.parse_args(argv)

    if args.released is not None:
        args.released.mkdir(parents=True, exist_ok=True)
        for filename, card in released_cards().items():
            card.save(args.released / filename)
            print(f"Wrote {args.released / filename}")
        return
    if not args.repo_id:
        parser.error("--model-dir needs --repo-id")
    card = model_card_for_directory(
        args.model_dir,
        repo_id=args.repo_id,
        results_path=args.results,
        training=json.loads(args.training.read_text()) if args.training else None,
        converted_from=args.converted_from,
        datasets=args.dataset,
    )
    output = args.output or args.model_dir / "README.md"
    card.save(output)
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
