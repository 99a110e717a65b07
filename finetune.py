"""Fine-tune UniMed-CLIP into an image classifier on your own labelled images.

    accelerate launch finetune.py --model unimed-clip/unimed-clip-vit-b16 --image-folder chest_xrays/ \
        --modality xray --method full --wise-ft --output-dir runs/chest-xray
    ... --csv labels.csv [--validation val.csv] [--test test.csv]           # path and label columns
    ... --hf-dataset ORG/NAME [--split train --validation validation --test test] [--streaming]
    ... --method linear-probe | full | lora                                   # lora needs `pip install peft`
    ... --resume latest                                                       # continue a stopped run

The classifier starts as the zero-shot classifier of the class prompts (--modality templates, or --prompts FILE), is
evaluated on the validation (and test) images before and after training, and ends in <output-dir>/final/, loadable
with `pipeline("image-classification")`. Options also take the transformers `Trainer` names (--learning_rate,
--per_device_train_batch_size, --save_steps, --resume_from_checkpoint, --hub_model_id, ...), or come from one YAML
file: `finetune.py my.yaml`.
"""

import sys

from unimedclip.finetuning import DataError, ModelError, NonFiniteLossError, finetune, parse_args
from unimedclip.training.checkpointing import CheckpointWriteError, DivergedWeightsError
from unimedclip.training.config import ConfigurationError


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        final_dir = finetune(config)
    except (
        ConfigurationError,
        DataError,
        ModelError,
        NonFiniteLossError,
        DivergedWeightsError,
        CheckpointWriteError,
    ) as error:
        sys.exit(f"finetune.py: error: {error}")
    print(f"Final classifier in {final_dir}")


if __name__ == "__main__":
    main()
