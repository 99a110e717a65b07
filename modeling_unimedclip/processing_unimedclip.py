"""Processor for UniMed-CLIP: the BiomedBERT WordPiece tokenizer with the original text cleaning, and the image
processor."""

import html

from transformers import PreTrainedTokenizerBase
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType, logging

from .image_processing_unimedclip import UniMedCLIPImageProcessor

try:
    import ftfy
except ImportError:
    ftfy = None

logger = logging.get_logger(__name__)

# The original model's text context length: captions were truncated to 256 tokens in training and evaluation.
CONTEXT_LENGTH = 256


def clean_text(text: str) -> str:
    """
    The text cleaning the original model was trained with (open_clip's `HFTokenizer`): `ftfy.fix_text`, HTML
    unescaping twice, then whitespace runs collapsed to single spaces and the ends stripped.
    """
    if ftfy is not None:
        text = ftfy.fix_text(text)
    else:
        logger.warning_once(
            "ftfy is not installed, so text is cleaned without `ftfy.fix_text` and may tokenize differently from the "
            "original UniMed-CLIP (for example curly quotes or mojibake). Install it with `pip install ftfy`."
        )
    text = html.unescape(html.unescape(text))
    return " ".join(text.split())


class UniMedCLIPProcessor(ProcessorMixin):
    r"""
    UniMed-CLIP processor: a [`UniMedCLIPImageProcessor`] and a BiomedBERT (uncased WordPiece) tokenizer.

    Text is cleaned as in the original ([`clean_text`]) and tokenized as `[CLS] ... [SEP]`, truncated to 256 tokens
    and, unlike the original's fixed length of 256, padded to the longest text of the batch: the model reads the
    masked [CLS] state, so the embeddings are the same.

    Args:
        image_processor ([`UniMedCLIPImageProcessor`]):
            The image processor.
        tokenizer ([`BertTokenizer`]):
            The BiomedBERT tokenizer.
    """

    def __init__(self, image_processor: UniMedCLIPImageProcessor, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__(image_processor, tokenizer)

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        padding: bool | str = "longest",
        truncation: bool | str = True,
        max_length: int | None = CONTEXT_LENGTH,
        return_tensors: str | TensorType | None = TensorType.PYTORCH,
        **kwargs,
    ) -> BatchFeature:
        """
        Tokenize `text` and/or preprocess `images`.

        Args:
            text (`str` or `list[str]`, *optional*):
                One text or a batch of texts.
            images (*optional*):
                One image or a list of images, as accepted by [`UniMedCLIPImageProcessor`].
            padding, truncation, max_length:
                Passed to the tokenizer; `padding="max_length"` reproduces the original fixed-length input.
            return_tensors (`str` or [`~utils.TensorType`], *optional*, defaults to `"pt"`):
                `"pt"` or `"np"`.
            kwargs:
                Options of the image processor (such as `size`) go to it; the others go to the tokenizer.

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask` and `token_type_ids` for text, `pixel_values` for images.
        """
        if text is None and images is None:
            raise ValueError("UniMedCLIPProcessor needs `text`, `images` or both; got neither.")
        image_options = self.image_processor.valid_kwargs.__annotations__
        image_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in image_options}

        data = {}
        if text is not None:
            texts = _clean_text_batch(text)
            data.update(
                self.tokenizer(
                    texts,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)


def _clean_text_batch(text: str | list[str]) -> list[str]:
    """Validate `text` (one string or a non-empty list of them) and clean every text, refusing empty results."""
    if isinstance(text, str):
        named = {"`text`": text}
    elif isinstance(text, (list, tuple)) and text:
        named = {f"`text[{index}]`": sample for index, sample in enumerate(text)}
    elif isinstance(text, (list, tuple)):
        raise ValueError("`text` is an empty list: expected at least one text.")
    else:
        raise TypeError(f"`text` must be a string or a list of strings; got {type(text).__name__}.")
    cleaned = []
    for name, sample in named.items():
        if not isinstance(sample, str):
            raise TypeError(f"{name} must be a string; got {type(sample).__name__}.")
        cleaned.append(clean_text(sample))
        if not cleaned[-1]:
            raise ValueError(f"{name} is empty after cleaning: {sample!r}.")
    return cleaned


__all__ = ["UniMedCLIPProcessor"]
