"""Processor for UniMed-CLIP: the BiomedBERT WordPiece tokenizer with the original text cleaning, and the image
processor."""

# First: the configuration module checks the transformers version before anything else is imported from it.
from .configuration_unimedclip import MIN_TRANSFORMERS  # noqa: F401

# isort: split
import html

from transformers import PreTrainedTokenizerBase
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, TextKwargs, Unpack
from transformers.utils import logging

from .image_processing_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPImageProcessorKwargs
from .image_processing_unimedclip_fast import UniMedCLIPImageProcessorFast

try:
    import ftfy
except ImportError:
    ftfy = None

logger = logging.get_logger(__name__)

# The original model's text context length: captions were truncated to 256 tokens in training and evaluation.
CONTEXT_LENGTH = 256


class UniMedCLIPProcessorKwargs(ProcessingKwargs, total=False):
    text_kwargs: TextKwargs
    images_kwargs: UniMedCLIPImageProcessorKwargs


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
    UniMed-CLIP processor: a [`UniMedCLIPImageProcessor`] (or its fast variant) and a BiomedBERT (uncased WordPiece)
    tokenizer.

    Text is cleaned as in the original ([`clean_text`]) and tokenized as `[CLS] ... [SEP]`, truncated to 256 tokens
    and, unlike the original's fixed length of 256, padded to the longest text of the batch: the model reads the
    masked [CLS] state, so the embeddings are the same.

    Options follow transformers' processing conventions: `text_kwargs={...}` and `images_kwargs={...}` reach the
    tokenizer and the image processor; an option given at the top level goes to whichever of them takes it
    (`padding="max_length"`, `do_normalize=False`, `window="lung"`); `return_tensors` (default `"pt"`) applies to
    both. An option that neither takes raises a `ValueError` naming it.

    Args:
        image_processor ([`UniMedCLIPImageProcessor`] or [`UniMedCLIPImageProcessorFast`]):
            The image processor.
        tokenizer ([`BertTokenizer`]):
            The BiomedBERT tokenizer.
    """

    valid_processor_kwargs = UniMedCLIPProcessorKwargs
    text_kwargs = {"padding": "longest", "truncation": True, "max_length": CONTEXT_LENGTH, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(
        self,
        image_processor: UniMedCLIPImageProcessor | UniMedCLIPImageProcessorFast,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        super().__init__(image_processor, tokenizer)

    def __call__(self, images=None, text: str | list[str] | None = None, **kwargs: Unpack[UniMedCLIPProcessorKwargs]):
        """
        Tokenize `text` and/or preprocess `images`.

        Args:
            images (*optional*):
                One image or a list of images, as accepted by [`UniMedCLIPImageProcessor`].
            text (`str` or `list[str]`, *optional*):
                One text or a batch of texts.
            kwargs:
                Tokenizer and image processor options (see the class docstring); `padding="max_length"` reproduces
                the original fixed-length input.

        Returns:
            [`BatchFeature`]: `input_ids`, `attention_mask` and `token_type_ids` for text, `pixel_values` for images.
        """
        if text is None and images is None:
            raise ValueError("UniMedCLIPProcessor needs `text`, `images` or both; got neither.")
        self._check_options(kwargs)
        options = self._merge_kwargs(
            UniMedCLIPProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        data = {}
        if text is not None:
            data.update(self.tokenizer(_clean_text_batch(text), **options["text_kwargs"]))
        if images is not None:
            data.update(self.image_processor(images, **options["images_kwargs"]))
        return_tensors = options["text_kwargs"].get("return_tensors") or options["images_kwargs"].get("return_tensors")
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _check_options(self, kwargs: dict) -> None:
        """transformers only logs options that no sub-processor takes; a misspelt option must not pass unnoticed."""
        valid = {
            "text_kwargs": set(TextKwargs.__annotations__),
            "images_kwargs": set(self.image_processor.valid_kwargs.__annotations__),
        }
        for key, value in kwargs.items():
            if key in valid:
                unknown = sorted(set(value) - valid[key])
                if unknown:
                    raise ValueError(f"Unknown option(s) {unknown} in `{key}`; valid: {sorted(valid[key])}.")
            elif not any(key in options for options in valid.values()):
                raise ValueError(
                    f"Unknown option `{key}` for UniMedCLIPProcessor: neither the tokenizer nor the image processor "
                    f"takes it. Image options: {sorted(valid['images_kwargs'])}."
                )


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
