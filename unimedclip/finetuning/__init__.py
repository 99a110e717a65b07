"""Fine-tuning UniMed-CLIP into an image classifier on one's own labelled images (`finetune.py`).

config.py     the options (FinetuneConfig) and the command line
data.py       the labelled splits: readers, class list, unreadable images, the stratified validation split
sampling.py   the seeded order of training images (shuffled or class-balanced) and class weights
model.py      the starting classifier (zero-shot head or a new one) and what each method trains
metrics.py    a classifier's metrics on a split
wise_ft.py    weight-space ensembles of the zero-shot and fine-tuned classifiers
state.py      what a checkpoint keeps of the run: results before training, validations, early stopping
run.py        the run on Accelerate: training, checkpoints and resume, the final model, card and upload
"""

from ..training.checkpointing import NonFiniteLossError
from .config import FinetuneConfig, parse_args
from .data import DataError
from .model import ModelError
from .run import finetune

__all__ = ["DataError", "FinetuneConfig", "ModelError", "NonFiniteLossError", "finetune", "parse_args"]
