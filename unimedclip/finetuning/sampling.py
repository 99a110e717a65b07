"""The order training images are drawn in, and the loss weights of skewed classes.

Each epoch's order is a function of (seed, epoch) only: a permutation of the training images, or, with class-balanced
sampling, as many draws with replacement, each class equally likely. A `StatefulDataLoader` over these batches
resumes by replaying the epoch's order up to its position, so a resumed run sees exactly the batches it would have.
"""

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight


class EpochBatches(torch.utils.data.Sampler[list[int]]):
    """This process's micro-batches of one epoch, in order: each optimizer step takes `micro_batch_size x
    world_size x accumulation` images of the epoch's order, split into `accumulation` micro-steps, each split over
    the processes. A last, incomplete global batch is dropped (the next epoch's order differs)."""

    def __init__(
        self,
        labels: list[int],
        micro_batch_size: int,
        accumulation: int,
        rank: int,
        world_size: int,
        seed: int,
        balanced: bool,
    ):
        self.labels = np.asarray(labels)
        self.micro_batch_size, self.accumulation = micro_batch_size, accumulation
        self.rank, self.world_size, self.seed, self.balanced = rank, world_size, seed, balanced
        self.global_batch = micro_batch_size * world_size * accumulation
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.global_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The epoch's sequence of image indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.balanced:
            return rng.permutation(len(self.labels))
        counts = np.bincount(self.labels)
        weights = 1.0 / counts[self.labels]
        return rng.choice(len(self.labels), size=len(self.labels), replace=True, p=weights / weights.sum())

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulation

    def __iter__(self):
        order = self.order()
        for step in range(self.steps_per_epoch):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            for micro_step in range(self.accumulation):
                start = (micro_step * self.world_size + self.rank) * self.micro_batch_size
                yield batch[start : start + self.micro_batch_size].tolist()


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Per-class loss weights `n / (classes x n_class)` (scikit-learn's 'balanced'); every class must occur."""
    present = np.arange(num_classes)
    return torch.tensor(compute_class_weight("balanced", classes=present, y=np.asarray(labels)), dtype=torch.float32)
