"""Model cards for UniMed-CLIP checkpoints, rendered from what the checkpoint and its evaluation files say.

    unimedclip card --model-dir DIR --repo-id ORG/NAME [--results results.json] [--comparison comparison.json] \\
        [--training training.json] [--converted-from UzairK/unimed-clip-vit-b16]    # writes DIR/README.md
    unimedclip card --released model_cards/                                     # the three released variants

The architecture comes from `config.json`, the parameter count from the safetensors headers (no weights are loaded),
evaluation numbers only from a `results.json` written by `evaluate_zero_shot.py`, and the comparison with other
models only from the `comparison.json` it writes when given several models. Without results, the card says that
evaluation is pending and shows only the averages reported in the paper, labelled as such.
"""

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_unimedclip.configuration_unimedclip import UniMedCLIPConfig
from modeling_unimedclip.modeling_unimedclip import UniMedCLIPModel

from ..data.sources import CAPTION_RULES, LICENSE_CLASSES, SOURCES
from ..evaluation.comparison import comparison_markdown
from ..modalities import MODALITIES
from ..paper import CITATION
from ..variants import VARIANTS, variant_of
from .model_files import count_parameters

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")
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
    variant: str | None  # the released variant with these dimensions, if any

    @classmethod
    def from_config(cls, config: UniMedCLIPConfig, parameters: int) -> "Architecture":
        vision, text = config.vision_config, config.text_config
        variant = variant_of(config)
        return cls(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            vision_width=vision.hidden_size,
            vision_layers=vision.num_hidden_layers,
            text_width=text.hidden_size,
            text_layers=text.num_hidden_layers,
            projection_dim=config.projection_dim,
            parameters=parameters,
            variant=variant.name if variant else None,
        )

    @classmethod
    def from_directory(cls, model_dir: str | Path) -> "Architecture":
        return cls.from_config(UniMedCLIPConfig.from_pretrained(model_dir), count_parameters(model_dir))

    @classmethod
    def from_variant(cls, variant: str) -> "Architecture":
        """A released variant's shape; parameters counted on a meta-device model (no memory, no weights)."""
        config = VARIANTS[variant].config()
        with torch.device("meta"):
            parameters = UniMedCLIPModel(config).num_parameters()
        return cls.from_config(config, parameters)


def load_results(path: str | Path) -> dict:
    """A zero-shot `results.json` from `evaluate_zero_shot.py`, checked to hold what the card shows."""
    report = json.loads(Path(path).read_text())
    missing = [key for key in ("results", "summary", "model_index") if key not in report]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}: the card needs a zero-shot results.json written by evaluate_zero_shot.py."
        )
    return report


def load_comparison(path: str | Path) -> dict:
    """A `comparison.json` from `evaluate_zero_shot.py` run with several models."""
    comparison = json.loads(Path(path).read_text())
    missing = [key for key in ("models", "datasets", "modalities", "average") if key not in comparison]
    if missing:
        raise ValueError(
            f"{path} lacks {missing}: the card needs a comparison.json written by evaluate_zero_shot.py with several "
            "--model."
        )
    return comparison


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
    towers: tuple[str | None, str | None] | None = None,
    comparison: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of a checkpoint with this architecture, published as `repo_id`.

    `results`: a zero-shot `results.json` (see `load_results`); `comparison`: these and other models side by side on
    the same images and prompts (see `load_comparison`); `training`: settings of the run that produced the
    weights (shown as a table); `converted_from`: the original checkpoint the weights were converted from;
    `datasets`: Hub datasets the weights were trained on; `towers`: the (vision, text) checkpoints the towers were
    initialised from, by default those of the released variant with this architecture.
    """
    name = repo_id.split("/")[-1]
    if towers is None:
        variant = VARIANTS.get(architecture.variant)
        towers = (variant.vision_init, variant.text_init) if variant else (None, None)
    vision_base, text_base = towers
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
        base_model=[model for model in towers if model] or None,
        # Two bases read as a merge on the Hub: each tower was fine-tuned from its own base.
        base_model_relation="finetune" if any(towers) else None,
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
        vision_base=vision_base,
        text_base=text_base,
        converted_from=converted_from,
        training=training,
        results=results,
        modalities=MODALITIES,
        variants=list(VARIANTS.values()),
        citation=CITATION,
        sources=list(SOURCES.values()),
        caption_rules=CAPTION_RULES,
        license_classes=LICENSE_CLASSES,
        restricted_share=restricted_share(),
        prompt_set=Path(prompts).name if prompts else None,
        comparison=comparison,
        comparison_table=comparison_markdown(comparison) if comparison else None,
    )


def model_card_for_directory(
    model_dir: str | Path,
    *,
    repo_id: str,
    results_path: str | Path | None = None,
    training: Mapping[str, Any] | None = None,
    converted_from: str | None = None,
    datasets: Sequence[str] = (),
    towers: tuple[str | None, str | None] | None = None,
    comparison_path: str | Path | None = None,
) -> ModelCard:
    """The card of the saved model in `model_dir`; write it with `.save(Path(model_dir) / "README.md")`."""
    return render_model_card(
        Architecture.from_directory(model_dir),
        repo_id=repo_id,
        results=load_results(results_path) if results_path else None,
        training=training,
        converted_from=converted_from,
        datasets=datasets,
        towers=towers,
        comparison=load_comparison(comparison_path) if comparison_path else None,
    )


def released_cards() -> dict[str, ModelCard]:
    """Cards of the released variants, by file name, before any evaluation of the converted weights."""
    return {
        f"{variant.repo_id.split('/')[-1]}.md": render_model_card(
            Architecture.from_variant(variant.name),
            repo_id=variant.repo_id,
            converted_from=variant.original_checkpoint,
        )
        for variant in VARIANTS.values()
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-dir", type=Path, help="Saved model; the card is written to DIR/README.md.")
    target.add_argument("--released", type=Path, metavar="DIR", help="Write the released variants' cards.")
    parser.add_argument("--repo-id", help="Hub repository the model is published as (with --model-dir).")
    parser.add_argument("--results", type=Path, help="results.json from evaluate_zero_shot.py.")
    parser.add_argument(
        "--comparison", type=Path, help="comparison.json from evaluate_zero_shot.py with several --model."
    )
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
        comparison_path=args.comparison,
    )
    output = args.output or args.model_dir / "README.md"
    card.save(output)
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
