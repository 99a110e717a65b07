"""Contrastive losses across processes, chosen by name (`TrainingConfig.loss`, `create_loss`).

`infonce` is the original's: features all-gathered with gradients, local loss. Each process scores its own B rows
against all W x B gathered columns, with labels `arange(B) + B * rank`, and averages over its own rows. The loss on
one process is therefore the single-process loss restricted to its rows, and the mean over processes equals the
single-process loss on the global batch. Gradients match too, with no extra scaling: the backward of the all-gather
sums every process's gradient into the features it gathered (reduce-scatter SUM), so process r's parameters receive
d(sum_s L_s)/d(theta via r's features) = W x dL/d(theta via r), and DDP/FSDP average over W processes, which cancels
that W.

A new loss is an `nn.Module` taking `(rank, world_size)` whose forward maps this process's normalised image and text
embeddings and the scale `exp(logit_scale)` to a scalar; register it in `LOSSES`.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed import _functional_collectives as functional_collectives


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """Concatenate `features` (B, D) of every process along dim 0, keeping the autograd graph."""
    gathered = functional_collectives.all_gather_single_autograd(features, gather_dim=0, group=dist.group.WORLD)
    return functional_collectives.wait_tensor(gathered)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (mean of the image-to-text and text-to-image cross-entropies) of this process's pairs
    against the whole global batch."""

    def __init__(self, rank: int, world_size: int):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        all_image_embeds, all_text_embeds = image_embeds, text_embeds
        if self.world_size > 1:
            all_image_embeds, all_text_embeds = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
        logits_per_image = logit_scale * image_embeds @ all_text_embeds.T
        logits_per_text = logit_scale * text_embeds @ all_image_embeds.T
        labels = torch.arange(len(image_embeds), device=image_embeds.device) + len(image_embeds) * self.rank
        return (
            F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)
        ) / 2


LOSSES: dict[str, type[nn.Module]] = {"infonce": InfoNCELoss}


def create_loss(name: str, rank: int = 0, world_size: int = 1) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    return LOSSES[name](rank=rank, world_size=world_size)


class ContrastiveTrainingModel(nn.Module):
    """The model plus its loss in one forward, so that DDP and FSDP see every parameter used in `forward`
    (including `logit_scale`, which FSDP only materialises inside it)."""

    def __init__(self, model: nn.Module, loss: nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logit scale exp(logit_scale), detached)."""
        if self.model.text_model.config._attn_implementation == "sdpa":
            # transformers passes a 4D mask to SDPA as given; a 2D one it first checks for padding
            # (`padding_mask.all()`), which makes the host wait for the device in every step.
            attention_mask = attention_mask[:, None, None, :].bool()
        outputs = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        scale = self.model.logit_scale.exp()
        return self.loss(outputs.image_embeds, outputs.text_embeds, scale), scale.detach()
