"""What train.py records between two host synchronisations, and the one synchronisation that reads it.

A training step never waits for the device: every micro-step's loss, the caption tokens and the logit scale stay on
the device in an `IntervalRecord`, the model FLOPs are counted on the host, and `IntervalRecord.read` fetches them
all, summed over the processes, in one collective and one copy to the host. train.py reads once per logging
interval and before anything that must not start on diverged weights (a checkpoint, an evaluation, the final
export): a non-finite loss is found at most `log_every` steps late, by every process at the same step, so that all of
them stop together.
"""

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator


@dataclass
class IntervalReading:
    losses: list[list[float]]  # [step of the interval][micro-step]: the mean over the processes
    tokens: int  # caption tokens (padding excluded), all processes
    flops: float  # model FLOPs, all processes
    logit_scale: float  # exp(logit_scale) of the last micro-step

    @property
    def mean_loss(self) -> float:
        return sum(map(sum, self.losses)) / sum(map(len, self.losses))

    def first_non_finite(self) -> tuple[int, float] | None:
        """(index of the step in the interval, its loss) of the first micro-step whose loss is not finite."""
        for index, micro_steps in enumerate(self.losses):
            for loss in micro_steps:
                if not math.isfinite(loss):
                    return index, loss
        return None


class IntervalRecord:
    """The losses and work of up to `max_steps` optimizer steps of `accumulation` micro-steps each, on `device`."""

    def __init__(self, max_steps: int, accumulation: int, device: torch.device):
        self.losses = torch.zeros(max_steps, accumulation, device=device)
        self.tokens = torch.zeros((), device=device)
        self.logit_scale = torch.zeros((), device=device)
        self.flops = 0.0
        self.steps = 0  # complete steps recorded since the last `reset`

    def add(
        self,
        micro_step: int,
        loss: torch.Tensor,
        attention_mask: torch.Tensor,
        logit_scale: torch.Tensor,
        flops: float,
    ) -> None:
        """Record a micro-step of the current step: device-side copies and sums only, nothing waits."""
        self.losses[self.steps, micro_step] = loss.detach()
        self.tokens += attention_mask.sum()
        self.logit_scale = logit_scale.detach()
        self.flops += flops

    def end_step(self) -> None:
        self.steps += 1

    def read(self, accelerator: Accelerator) -> IntervalReading:
        """The steps recorded since the last `reset`, the same on every process. Synchronises with the device."""
        with torch.profiler.record_function("IntervalRecord.read"):  # names the synchronisation in profiles
            flops = torch.tensor([self.flops], device=self.losses.device)  # a copy to the device waits, too
            work = torch.stack([self.tokens, self.logit_scale])
            local = torch.cat([self.losses[: self.steps].flatten(), work, flops])
            total = accelerator.reduce(local, "sum").tolist()
        processes = accelerator.num_processes
        accumulation = self.losses.shape[1]
        losses = [loss / processes for loss in total[: self.steps * accumulation]]
        tokens, logit_scale, flops = total[self.steps * accumulation :]
        return IntervalReading(
            losses=[losses[i : i + accumulation] for i in range(0, len(losses), accumulation)],
            tokens=round(tokens),
            flops=flops,
            logit_scale=logit_scale / processes,
        )

    def reset(self) -> None:
        self.tokens.zero_()
        self.flops = 0.0
        self.steps = 0
