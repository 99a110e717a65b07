"""The Search tab's collection: embeddings with their search index and the images they came from, either an
`unimedclip embed` output (a directory or a Hub dataset) or the app's own gallery, embedded at startup."""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_unimedclip.image_processing_unimedclip import to_pil_image
from unimedclip.inference.embedding import (
    ImageSource,
    collection_metadata,
    embed_images,
    embeddings_dataset,
    folder_source,
    model_reference,
)
from unimedclip.inference.search import EmbeddingIndex, load_embeddings


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    reference: str | int


class Collection:
    def __init__(self, embeddings, metadata: dict, source: ImageSource):
        self.metadata, self.source = metadata, source
        self.index = EmbeddingIndex(embeddings)
        self.references = embeddings[source.reference_column]

    def nearest(self, query: np.ndarray, k: int) -> list[Hit]:
        scores, rows = self.index.search(query, k)
        return [
            Hit(rank, float(score), self.references[row])
            for rank, (score, row) in enumerate(zip(scores, rows), start=1)
        ]

    def image(self, reference: str | int) -> Image.Image:
        """The image for display: DICOM in its own window, 16-bit images range-scaled."""
        return to_pil_image(self.source.image(reference))

    def summary(self) -> str:
        where = self.source.root or self.metadata["source"]["dataset"]
        return f"{len(self.index)} images from `{where}`, embedded by `{self.metadata['model']}`; {self.index.kind}."


def gallery_collection(model, processor, model_name: str, gallery: Path) -> Collection:
    """The app's own gallery folder embedded with the loaded model, in memory."""
    source, references = folder_source(gallery)
    kept, embeddings, unreadable = embed_images(model, processor.image_processor, source, references)
    metadata = collection_metadata(model_name, None, source, model.config.projection_dim, len(kept), unreadable)
    return Collection(embeddings_dataset(source, kept, embeddings), metadata, source)


def saved_collection(name_or_path: str, model_name: str, images_root: str | None = None) -> Collection:
    """An `unimedclip embed` output. Files are opened under `images_root` when given, else under the root the
    collection recorded, which only a local collection may use: a downloaded one names another machine's folders."""
    embeddings, metadata = load_embeddings(name_or_path)
    is_local = Path(name_or_path).is_dir()
    if metadata["source"]["kind"] != "hub" and images_root is None and not is_local:
        raise ValueError(f"{name_or_path} indexes image files: pass --images-root with your copy of its images.")
    if metadata["model"] != model_reference(model_name):
        print(
            f"Warning: {name_or_path} was embedded by {metadata['model']}; the app queries it with {model_name}.",
            file=sys.stderr,
        )
    return Collection(embeddings, metadata, ImageSource(metadata["source"], root=images_root))
