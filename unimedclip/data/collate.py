"""Batching UniMed samples for the model: images stacked, captions cleaned and tokenized with dynamic padding."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from modeling_unimedclip.processing_unimedclip import CONTEXT_LENGTH, clean_text


class UniMedCollator:
    """
    Batch samples of `load_unimed`: stack the uint8 images and tokenize the cleaned captions, truncated to
    `max_length` tokens and padded to the longest caption of the batch (the model reads the masked [CLS] state, so
    this gives the embeddings of the original's fixed padding to 256).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = CONTEXT_LENGTH):
        if max_length <= 0:
            raise ValueError(f"`max_length` must be positive; got {max_length}.")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (int64) of the cleaned captions."""
        if not captions:
            raise ValueError("Cannot collate an empty list of samples.")
        text = self.tokenizer(
            [clean_text(caption) for caption in captions],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": text["input_ids"].long(), "attention_mask": text["attention_mask"].long()}

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        text = self.tokenize([sample["caption"] for sample in samples])
        return {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples]), **text}
