"""AdamW with the original's weight-decay groups, and its warmup + cosine learning-rate schedule."""

import math
from typing import Protocol

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainingConfig


def is_decayed(name: str, parameter: nn.Parameter) -> bool:
    """The original excluded `ndim < 2` or names containing bn/ln/bias/logit_scale. Mapped to transformers names:
    decayed are matrices and tables (patch conv, position and BERT embeddings, attention/MLP weights, projections);
    not decayed are LayerNorm weights (`layer_norm*`, `*layrnorm`, `LayerNorm`), biases, the class embedding and
    `logit_scale`, all of which have ndim < 2."""
    return parameter.ndim >= 2 and not name.endswith("bias") and "logit_scale" not in name


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups of the trainable parameters: decayed and not decayed."""
    decayed, not_decayed = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decayed if is_decayed(name, parameter) else not_decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": not_decayed, "weight_decay": 0.0}]


class AdamWOptions(Protocol):
    """The options `build_optimizer` reads: those of `TrainingConfig` and of fine-tuning's `FinetuneConfig`."""

    lr: float
    weight_decay: float
    beta1: float
    beta2: float
    eps: float


def build_optimizer(model: nn.Module, config: AdamWOptions, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        # torch's fused kernel runs on CPUs too (a third of the step time of the loop over tensors there).
        fused=device.type in ("cuda", "cpu"),
    )


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The original `cosine_lr`: `(step + 1) / warmup` during warmup, then a half cosine from 1 to 0 over the rest."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> LambdaLR:
    """Optimizer step `k` (from 0) runs at `lr * lr_factor(k)`, as the original set it before every step."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, config.warmup_steps, config.total_steps))
