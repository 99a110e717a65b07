"""The model card of a trained model: the run's settings, and its evaluation once there is one."""

from pathlib import Path

from huggingface_hub import ModelCard

from ..model_card import model_card_for_directory
from .config import TrainingConfig


def training_model_card(
    model_dir: str | Path, config: TrainingConfig, results_path: str | Path | None = None
) -> ModelCard:
    """The card of `model_dir` trained with `config`; `results_path` is `evaluate_zero_shot.py`'s results.json."""
    if config.init == "pretrained":
        initialisation = config.pretrained
    elif config.init == "vision-text":
        initialisation = f"{config.vision} + {config.text}"
    else:
        initialisation = f"{config.architecture} from scratch"
    training = {
        "initialisation": initialisation,
        "data": config.data,
        "global batch": config.batch_size,
        "steps": config.total_steps,
        "peak learning rate": config.lr,
        "warmup steps": config.warmup_steps,
        "weight decay": config.weight_decay,
        "precision": config.mixed_precision,
    }
    hub_data = [] if Path(config.data).exists() else [config.data]
    repo_id = config.push_to_hub or f"local/{Path(config.output_dir).name}"
    return model_card_for_directory(
        model_dir, repo_id=repo_id, training=training, results_path=results_path, datasets=hub_data
    )
