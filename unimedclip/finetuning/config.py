"""Fine-tuning configuration: one dataclass, parsed with transformers' `HfArgumentParser` (both spellings of every
option, the transformers `Trainer` names train.py also accepts, or a YAML/JSON file of the same keys)."""

import dataclasses
import math
import sys
from argparse import ArgumentTypeError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from transformers import HfArgumentParser

from ..inference.predict import parse_window
from ..modalities import MODALITIES
from ..training.config import MIXED_PRECISION, TRACKERS, TRAINER_NAMES, ConfigurationError, with_our_names

METHODS = ("linear-probe", "full", "lora")
# Defaults by method: a new head learns fast; the whole tower, slowly (WiSE-FT's and FLYP's 1e-5 for CLIP ViTs).
DEFAULT_LR = {"linear-probe": 1e-3, "lora": 1e-4, "full": 1e-5}
METRICS = ("accuracy", "balanced_accuracy", "auc")
WISE_FT_COEFFICIENTS = [round(0.1 * k, 1) for k in range(11)]
# Run-control fields a resumed run may change; any other difference from the saved config is an error.
RESUMABLE_CHANGES = {
    "output_dir",
    "resume",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_workers",
    "eval_batch_size",
    "push_to_hub",
    "report_to",
}


@dataclass
class FinetuneConfig:
    """A fine-tuning run: a UniMed-CLIP checkpoint, labelled images, a method."""

    # Model
    model: str = field(
        metadata={"help": "UniMed-CLIP checkpoint (directory or Hub id), or a classifier fine-tuned from one."}
    )
    output_dir: str = field(metadata={"help": "Checkpoints, logs and the final model with its results (final/)."})
    method: Literal[METHODS] = field(
        default="full", metadata={"help": "linear-probe (frozen tower), full, or lora (attention; needs peft)."}
    )
    head_init: Literal["zero-shot", "random"] = field(
        default="zero-shot", metadata={"help": "zero-shot: the head starts as the class prompts' text embeddings."}
    )
    classes: list[str] | None = field(
        default=None, metadata={"help": "Class names in label order; default: the training data's, sorted."}
    )
    modality: Literal[tuple(MODALITIES)] | None = field(
        default=None, metadata={"help": "Expand class names with this modality's shipped prompt templates."}
    )
    prompts: str | None = field(default=None, metadata={"help": 'JSON {"class": ["prompt", ...]} for the head.'})
    lora_r: int = 16
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (scale = alpha / r)."})
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        metadata={"help": "Image tower modules LoRA adapts."},
    )

    # Data
    image_folder: str | None = field(default=None, metadata={"help": "Training images: <folder>/<class>/<image>."})
    csv: str | None = field(
        default=None, metadata={"help": "Training CSV with a header: image path (relative to the CSV), label."}
    )
    hf_dataset: str | None = field(
        default=None, metadata={"help": "Hugging Face dataset (Hub id or directory) with image and label columns."}
    )
    split: str = field(default="train", metadata={"help": "--hf-dataset: the training split."})
    validation: str | None = field(
        default=None,
        metadata={"help": "Validation data of the same kind (folder, CSV or split); default: part of the training."},
    )
    test: str | None = field(
        default=None, metadata={"help": "Test data of the same kind; evaluated before and after fine-tuning only."}
    )
    streaming: bool = field(default=False, metadata={"help": "--hf-dataset: stream rather than download first."})
    path_column: str = "path"
    image_column: str = "image"
    label_column: str = "label"
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the training data held out for validation (stratified, seeded)."}
    )
    window: str | None = field(default=None, metadata={"help": "DICOM: window preset (lung, ...) or 'center,width'."})
    frame: int | None = field(default=None, metadata={"help": "DICOM: the frame of multi-frame files."})
    balanced_sampling: bool = field(
        default=False, metadata={"help": "Draw training images with equal probability per class."}
    )
    class_weights: bool = field(
        default=False, metadata={"help": "Weight the loss by inverse class frequency (sklearn's 'balanced')."}
    )

    # Optimisation
    epochs: int = 10
    max_steps: int | None = field(default=None, metadata={"help": "Total steps; default epochs x steps per epoch."})
    batch_size: int = field(default=32, metadata={"help": "Global batch: images per optimizer step."})
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "Images per device per forward pass; default batch / processes."}
    )
    lr: float | None = field(default=None, metadata={"help": f"Peak learning rate; default by method: {DEFAULT_LR}."})
    weight_decay: float = 0.1
    warmup_steps: int | None = field(
        default=None, metadata={"help": "Linear warmup, then cosine decay; default 10%% of the steps."}
    )
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: none)."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": f"One of {MIXED_PRECISION}; default: what accelerate launch says."}
    )
    activation_checkpointing: bool = False
    seed: int = 0

    # Run
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint directory."})
    log_every: int = 10
    eval_every: int | None = field(default=None, metadata={"help": "Validate every N steps; default every epoch."})
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "Checkpoint every N steps; default at every validation."}
    )
    keep_checkpoints: int = 2
    metric_for_best_model: Literal[METRICS] = field(
        default="balanced_accuracy", metadata={"help": "Validation metric: best model, early stopping, WiSE-FT."}
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after N validations without improvement (0: never)."}
    )
    wise_ft: bool = field(
        default=False, metadata={"help": "Mix fine-tuned and zero-shot weights, the coefficient chosen on validation."}
    )
    wise_ft_coefficients: list[float] = field(default_factory=lambda: list(WISE_FT_COEFFICIENTS))
    eval_batch_size: int = 64
    num_workers: int = 4
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"], metadata={"help": f"Trackers: {', '.join(TRACKERS)}."}
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "ORG/NAME: upload checkpoints and the final model."}
    )
    base_model_id: str | None = field(
        default=None, metadata={"help": "Hub id of --model when it is a local copy, for the model card."}
    )

    def __post_init__(self) -> None:
        self.validate()
        if self.lr is None:  # resolved here, so that config.yaml records the rate the run used
            self.lr = DEFAULT_LR[self.method]

    @property
    def source(self) -> str:
        """The training data: --image-folder, --csv or --hf-dataset, whichever is given."""
        return next(value for value in (self.image_folder, self.csv, self.hf_dataset) if value is not None)

    @property
    def trackers(self) -> list[str] | None:
        return None if self.report_to == ["none"] else self.report_to

    def validate(self) -> None:
        """Raise ConfigurationError naming every invalid option."""
        errors = []
        for name in ("model", "output_dir"):
            if not getattr(self, name):
                errors.append(f"{name} must not be empty")
        sources = [kind for kind in ("image_folder", "csv", "hf_dataset") if getattr(self, kind) is not None]
        if len(sources) != 1:
            errors.append(f"give exactly one of --image-folder, --csv and --hf-dataset (got {len(sources)})")
        for name in ("epochs", "batch_size", "log_every", "eval_batch_size", "keep_checkpoints", "lora_r"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_steps", "micro_batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers", "early_stopping_patience", "frame"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"lr must be a positive number, got {self.lr}")
        if not 0 < self.validation_fraction < 1:
            errors.append(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0 <= self.weight_decay < 1:
            errors.append(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            errors.append(f"AdamW needs betas in [0, 1) and eps > 0, got {self.beta1}, {self.beta2}, {self.eps}")
        if not 0 <= self.lora_dropout < 1:
            errors.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.max_grad_norm < 0:
            errors.append(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            errors.append(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        unknown_trackers = sorted(set(self.report_to) - set(TRACKERS))
        if unknown_trackers:
            errors.append(f"report_to takes trackers of {TRACKERS}, got {unknown_trackers}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            errors.append(f"classes must be distinct, got {self.classes}")
        if self.prompts is not None and not Path(self.prompts).is_file():
            errors.append(f"prompts file {self.prompts} does not exist")
        if self.prompts is not None and self.modality is not None:
            errors.append("give --prompts or --modality (which expands class names into prompts), not both")
        if self.wise_ft and self.head_init != "zero-shot":
            errors.append("wise_ft mixes in the zero-shot classifier, so it needs head_init zero-shot")
        if not self.wise_ft_coefficients or not all(0 <= c <= 1 for c in self.wise_ft_coefficients):
            errors.append(f"wise_ft_coefficients must be in [0, 1], got {self.wise_ft_coefficients}")
        if self.activation_checkpointing and self.method == "linear-probe":
            errors.append("activation_checkpointing saves memory of a trained tower; the linear probe freezes it")
        if self.window is not None:
            try:
                parse_window(self.window)
            except ArgumentTypeError as error:
                errors.append(f"window: {error}")
        if self.resume is not None and self.resume != "latest" and not Path(self.resume).is_dir():
            errors.append(f"resume must be 'latest' or a checkpoint directory; {self.resume!r} is neither")
        if errors:
            raise ConfigurationError("Invalid fine-tuning configuration:\n  - " + "\n  - ".join(errors))

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _add_trainer_aliases() -> None:
    """`HfArgumentParser` gives every option `--name` and `--name-with-dashes`; the `Trainer` names that train.py
    accepts for the same options become aliases, in both spellings."""
    trainer_names = {ours: theirs for theirs, ours in TRAINER_NAMES.items()}
    for spec in dataclasses.fields(FinetuneConfig):
        if spec.name in trainer_names:
            theirs = trainer_names[spec.name]
            spec.metadata = {**spec.metadata, "aliases": [f"--{theirs}", f"--{theirs.replace('_', '-')}"]}


_add_trainer_aliases()


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    """`--option value ...`, or one YAML/JSON file whose keys are the options (train.py's or `Trainer`'s names)."""
    parser = HfArgumentParser(FinetuneConfig)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        values = yaml.safe_load(Path(argv[0]).read_text()) or {}  # YAML reads JSON too
        try:
            return parser.parse_dict(with_our_names(values))[0]
        except ValueError as error:
            parser.error(str(error))
    try:
        return parser.parse_args_into_dataclasses(argv, look_for_args_file=False)[0]
    except ConfigurationError as error:
        parser.error(str(error))
