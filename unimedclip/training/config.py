"""Training configuration: one dataclass, a preset per released variant plus `demo`, YAML files and `--field value`
command-line overrides."""

import argparse
import contextlib
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from accelerate import Accelerator
from accelerate.utils import LoggerType, PrecisionType

from ..modalities import DATA_MODALITIES
from ..variants import VARIANTS, Variant
from .loss import LOSSES

ARCHITECTURES = (*VARIANTS, "tiny")
MIXED_PRECISION = tuple(precision.value for precision in PrecisionType)
# Every tracker accelerate knows, "all" (those installed), or "none".
TRACKERS = (*(tracker.value for tracker in LoggerType), "none")
# transformers `Trainer`/`TrainingArguments` names, accepted on the command line and in YAML files.
TRAINER_NAMES = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "micro_batch_size",
    "num_train_epochs": "epochs",
    "adam_beta1": "beta1",
    "adam_beta2": "beta2",
    "adam_epsilon": "eps",
    "gradient_checkpointing": "activation_checkpointing",
    "dataloader_num_workers": "num_workers",
    "logging_steps": "log_every",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "eval_steps": "eval_every",
    "resume_from_checkpoint": "resume",
    "hub_model_id": "push_to_hub",
}
DEFAULT_VARIANT = VARIANTS["b16"]  # TrainingConfig's defaults are its recipe
# Run-control fields a resumed run may change; any other difference from the saved config is an error. The output
# directory may have moved: the saved config is read from where it is now.
RESUMABLE_CHANGES = {
    "output_dir",
    "resume",
    "log_every",
    "peak_tflops",
    "checkpoint_every",
    "keep_checkpoints",
    "num_workers",
    "push_to_hub",
    "eval_every",
    "eval_data",
    "eval_datasets",
    "report_to",
}


class ConfigurationError(ValueError):
    """An invalid training option, reported before anything starts."""


def check_launch(accelerator: Accelerator) -> None:
    """The launcher's process count must be accelerate's: torchrun without GPUs and without ACCELERATE_USE_CPU=1 would
    otherwise run independent trainings."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigurationError(
            f"Launched as {launched} processes but Accelerate runs {accelerator.num_processes}: on CPUs set "
            "ACCELERATE_USE_CPU=1 (or use `accelerate launch --cpu`)."
        )


@dataclass
class TrainingConfig:
    """UniMed-CLIP training run. Defaults are the B/16 recipe of the paper (REFERENCE section 4)."""

    # Initialisation, by precedence: a UniMed-CLIP checkpoint, else a CLIP vision + BERT text checkpoint pair,
    # else a model of `architecture` from scratch.
    pretrained: str | None = field(default=None, metadata={"help": "UniMed-CLIP directory or Hub repo to continue."})
    vision: str | None = field(
        default=DEFAULT_VARIANT.vision_init, metadata={"help": "CLIP checkpoint for the image tower."}
    )
    text: str | None = field(
        default=DEFAULT_VARIANT.text_init, metadata={"help": "BERT checkpoint for the text tower."}
    )
    architecture: str = field(
        default=DEFAULT_VARIANT.name, metadata={"help": f"From-scratch shape: {', '.join(ARCHITECTURES)}."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Input resolution; default: the model's."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer directory; default: --text's."})
    lock_image: bool = field(default=False, metadata={"help": "Freeze the image tower and its projection."})
    lock_text: bool = field(default=False, metadata={"help": "Freeze BERT (the text head still trains)."})

    # Data
    data: str | None = field(default=None, metadata={"help": "UniMed repository: Hub id or local directory."})
    modalities: list[str] | None = field(default=None, metadata={"help": "Subset of modalities; default all."})
    samples_per_epoch: int = field(default=5_282_000, metadata={"help": "Pairs per epoch, for the schedule."})
    epochs: int = 10
    batch_size: int = field(default=2048, metadata={"help": "Global batch: pairs per optimizer step."})
    micro_batch_size: int = field(default=128, metadata={"help": "Pairs per device per forward pass."})
    num_workers: int = 8
    decode_on_device: bool = field(
        default=False,
        metadata={"help": "Decode and crop JPEGs on the GPU (nvJPEG); the workers only read headers and captions."},
    )

    # Optimisation
    loss: str = field(default="infonce", metadata={"help": f"Contrastive loss: {', '.join(LOSSES)}."})
    lr: float = DEFAULT_VARIANT.peak_lr
    warmup_steps: int = 2000
    max_steps: int | None = field(default=None, metadata={"help": "Total steps; default epochs x steps/epoch."})
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": f"One of {', '.join(MIXED_PRECISION)}; default: what accelerate launch or config says."},
    )
    activation_checkpointing: bool = False
    compile: bool = field(default=False, metadata={"help": "torch.compile the two towers."})
    seed: int = 0

    # Run
    output_dir: str | None = None
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint directory."})
    log_every: int = 10
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Peak dense bf16 TFLOP/s of one device, for MFU; default: known GPUs' data sheets."},
    )
    checkpoint_every: int = 1000
    keep_checkpoints: int = field(default=3, metadata={"help": "Keep the newest K step checkpoints."})
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"], metadata={"help": f"Trackers: {', '.join(TRACKERS)}."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "ORG/NAME: upload checkpoints in background."})
    eval_every: int = field(default=0, metadata={"help": "Zero-shot evaluation every N steps (0: never)."})
    eval_data: str | None = field(default=None, metadata={"help": "Root of the zero-shot evaluation catalog."})
    eval_datasets: list[str] | None = field(default=None, metadata={"help": "Catalog keys; default all found."})

    def __post_init__(self) -> None:
        self.validate()

    @property
    def init(self) -> str:
        if self.pretrained:
            return "pretrained"
        return "vision-text" if self.vision or self.text else "scratch"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples_per_epoch / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * self.steps_per_epoch

    def validate(self) -> None:
        """Raise ConfigurationError naming every invalid field; world-size checks live in `accumulation_steps`."""
        errors = [
            message for spec in dataclasses.fields(self) if (message := _type_error(spec, getattr(self, spec.name)))
        ]
        if errors:
            raise ConfigurationError("Invalid training configuration:\n  - " + "\n  - ".join(errors))
        for name in ("samples_per_epoch", "epochs", "batch_size", "micro_batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_workers", "warmup_steps", "eval_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints == 0:
            errors.append("keep_checkpoints must be at least 1 so that a run can resume")
        if self.max_steps is not None and self.max_steps <= 0:
            errors.append(f"max_steps must be positive, got {self.max_steps}")
        if self.batch_size > 0 and self.micro_batch_size > 0 and self.batch_size % self.micro_batch_size:
            errors.append(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            errors.append(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.weight_decay < 1:
            errors.append(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                errors.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            errors.append(f"eps must be positive, got {self.eps}")
        if self.warmup_steps >= self.total_steps > 0:
            errors.append(
                f"warmup_steps ({self.warmup_steps}) must be smaller than the total steps ({self.total_steps})"
            )
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            errors.append(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        unknown_trackers = sorted(set(self.report_to) - set(TRACKERS))
        if unknown_trackers:
            errors.append(f"report_to takes trackers of {TRACKERS}, got {unknown_trackers}")
        if "none" in self.report_to and len(self.report_to) > 1:
            errors.append(f"report_to 'none' excludes other trackers, got {self.report_to}")
        if self.architecture not in ARCHITECTURES:
            errors.append(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.peak_tflops is not None and not (self.peak_tflops > 0 and math.isfinite(self.peak_tflops)):
            errors.append(f"peak_tflops must be a positive number, got {self.peak_tflops}")
        if self.image_size is not None and self.image_size <= 0:
            errors.append(f"image_size must be positive, got {self.image_size}")
        if not self.pretrained and bool(self.vision) != bool(self.text):
            errors.append("vision and text initialise the two towers together: give both or neither")
        if self.init == "scratch" and not self.tokenizer:
            errors.append("a model from scratch needs a tokenizer directory: set tokenizer (--tokenizer DIR)")
        unknown = sorted(set(self.modalities or []) - set(DATA_MODALITIES))
        if unknown:
            errors.append(f"unknown modalities {unknown}; choose from {DATA_MODALITIES}")
        if self.loss not in LOSSES:
            errors.append(f"loss must be one of {tuple(LOSSES)}, got {self.loss!r}")
        if self.eval_every and not self.eval_data:
            errors.append("eval_every needs eval_data (the zero-shot catalog root)")
        if self.resume is not None and self.resume != "latest" and not Path(self.resume).is_dir():
            errors.append(f"resume must be 'latest' or a checkpoint directory; {self.resume!r} is neither")
        if errors:
            raise ConfigurationError("Invalid training configuration:\n  - " + "\n  - ".join(errors))

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each device, so that the global batch is exactly `batch_size`."""
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ConfigurationError(
                f"batch_size {self.batch_size} must be a multiple of micro_batch_size x processes = "
                f"{self.micro_batch_size} x {world_size} = {per_step}."
            )
        return self.batch_size // per_step

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    @property
    def trackers(self) -> list[str] | None:
        """`Accelerator(log_with=...)`: None for no tracker."""
        return None if self.report_to == ["none"] else self.report_to

    def model_card_fields(self, precision: str) -> dict:
        """What the model card of this run's weights says about it: `model_card_for_directory` keyword arguments.
        `precision` is the one the run used (accelerate's, when `mixed_precision` is not set)."""
        if self.init == "pretrained":
            initialisation = self.pretrained
        elif self.init == "vision-text":
            initialisation = f"{self.vision} + {self.text}"
        else:
            initialisation = f"{self.architecture} from scratch"
        return {
            "repo_id": self.push_to_hub or f"local/{Path(self.output_dir).name}",
            "training": {
                "initialisation": initialisation,
                "data": self.data,
                "global batch": self.batch_size,
                "steps": self.total_steps,
                "peak learning rate": self.lr,
                "warmup steps": self.warmup_steps,
                "weight decay": self.weight_decay,
                "precision": precision,
            },
            # A continued UniMed-CLIP checkpoint: its variant's towers, the card's default.
            "towers": {"vision-text": (self.vision, self.text), "scratch": (None, None)}.get(self.init),
            "datasets": [] if Path(self.data).exists() else [self.data],
        }


def variant_preset(variant: Variant) -> dict:
    """The recipe's values for `variant`, over TrainingConfig's defaults."""
    return dict(
        vision=variant.vision_init,
        text=variant.text_init,
        architecture=variant.name,
        image_size=variant.image_size,
        lr=variant.peak_lr,
    )


PRESETS: dict[str, dict] = {
    **{name: variant_preset(variant) for name, variant in VARIANTS.items()},
    # A tiny model from scratch that trains on CPU in minutes; give --tokenizer DIR and --data DIR.
    "demo": dict(
        vision=None,
        text=None,
        architecture="tiny",
        image_size=64,
        samples_per_epoch=960,
        epochs=5,
        batch_size=32,
        micro_batch_size=32,
        num_workers=0,
        lr=1e-3,
        warmup_steps=20,
        log_every=5,
        checkpoint_every=50,
        keep_checkpoints=2,
    ),
}


def build_config(preset_or_yaml: str, overrides: dict | None = None) -> TrainingConfig:
    """A preset name or a YAML file (whose optional `preset` key names its base), then `overrides`."""
    if preset_or_yaml in PRESETS:
        values = dict(PRESETS[preset_or_yaml])
    elif Path(preset_or_yaml).is_file():
        from_file = yaml.safe_load(Path(preset_or_yaml).read_text()) or {}
        base = from_file.pop("preset", "b16")
        if base not in PRESETS:
            raise ConfigurationError(f"{preset_or_yaml}: unknown preset {base!r}; choose one of {sorted(PRESETS)}.")
        values = {**PRESETS[base], **from_file}
    else:
        raise ConfigurationError(
            f"--config {preset_or_yaml!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file."
        )
    values.update(overrides or {})
    values = with_our_names(values)
    for spec in dataclasses.fields(TrainingConfig):
        # YAML 1.1 reads `5e-4` (no dot) as a string.
        if _cli_type(spec.type)[0] is float and isinstance(values.get(spec.name), str):
            with contextlib.suppress(ValueError):
                values[spec.name] = float(values[spec.name])
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainingConfig)})
    if unknown:
        raise ConfigurationError(f"Unknown training option(s) {unknown}.")
    return TrainingConfig(**values)


def with_our_names(values: dict) -> dict:
    """`values` with transformers Trainer names (`TRAINER_NAMES`) renamed; giving both names of one option is an
    error."""
    renamed = {}
    for key, value in values.items():
        name = TRAINER_NAMES.get(key, key)
        if name in renamed:
            raise ConfigurationError(f"{key} and {name} are the same option; give one of them.")
        renamed[name] = value
    return renamed


def _cli_type(annotation) -> tuple[type, bool]:
    """(element type, is a list) of a field annotation such as `int | None` or `list[str] | None`."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _type_error(spec: dataclasses.Field, value) -> str | None:
    kind, is_list = _cli_type(spec.type)
    optional = type(None) in typing.get_args(spec.type)
    if value is None:
        return None if optional else f"{spec.name} must not be empty"
    items = value if is_list and isinstance(value, list) else [value]
    # bool is an int subclass; an int is a valid float (YAML reads `5e-4` as a string, `5.0e-4` as a float).
    ok = (not is_list or isinstance(value, list)) and all(
        isinstance(item, kind)
        and not (kind is not bool and isinstance(item, bool))
        or (kind is float and isinstance(item, int) and not isinstance(item, bool))
        for item in items
    )
    expected = f"a list of {kind.__name__}" if is_list else kind.__name__
    return None if ok else f"{spec.name} must be {expected}, got {value!r}"


def parse_args(argv: list[str] | None = None) -> tuple[TrainingConfig, bool]:
    """Parse `--config NAME_OR_YAML [--field value ...] [--print-config]`; returns (config, print_config)."""
    parser = argparse.ArgumentParser(
        description="Train UniMed-CLIP. Every option overrides the preset or YAML given by --config.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", default="b16", help=f"Preset ({', '.join(PRESETS)}) or YAML file.")
    parser.add_argument(
        "--print-config", "--print_config", action="store_true", help="Print the resolved configuration and exit."
    )
    trainer_names = {ours: theirs for theirs, ours in TRAINER_NAMES.items()}
    for spec in dataclasses.fields(TrainingConfig):
        kind, is_list = _cli_type(spec.type)
        names = [spec.name, *([trainer_names[spec.name]] if spec.name in trainer_names else [])]
        # Both spellings of every name: `--micro-batch-size` and `--micro_batch_size`.
        flags = list(dict.fromkeys(f"--{spelling}" for name in names for spelling in (name.replace("_", "-"), name)))
        help_text = spec.metadata.get("help")
        if kind is bool:
            parser.add_argument(*flags, dest=spec.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(*flags, dest=spec.name, type=kind, nargs="+" if is_list else None, help=help_text)
    values = vars(parser.parse_args(argv))
    preset, print_config = values.pop("config"), values.pop("print_config", False)
    try:
        return build_config(preset, values), print_config
    except ConfigurationError as error:
        parser.error(str(error))
