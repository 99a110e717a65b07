"""`unimedclip search`: the images of an embedded collection nearest to a description or to an image.

    unimedclip search EMBEDDINGS --text "chest x-ray with a right lower lobe opacity" [--top-k 10] [--json]
    unimedclip search EMBEDDINGS --image study.dcm

EMBEDDINGS is what `unimedclip embed` wrote: its output directory, or the Hub dataset it pushed. The query is embedded
by the model the collection was embedded with (recorded there; --model overrides it), with the text tower for --text
and the image tower for --image, and compared by cosine similarity. With FAISS installed (`pip install faiss-cpu`)
the search runs on the `datasets` FAISS index of the embeddings, exact by default (`IndexFlatIP`) or any FAISS index
factory string (--index-factory HNSW32); without it, or with --exact, by an exact matrix product in NumPy.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoProcessor

from modeling_unimedclip import UniMedCLIPTextModelWithProjection, UniMedCLIPVisionModelWithProjection

from .embedding import EMBEDDING_COLUMN, METADATA_FILE, ImageSource, load_tower
from .zero_shot import image_embeddings, text_embeddings


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def load_embeddings(name_or_path: str | Path, revision: str | None = None):
    """(the embeddings dataset, its metadata) from an `unimedclip embed` output directory or a Hub dataset."""
    import datasets

    path = Path(name_or_path)
    if path.is_dir():
        if not (path / METADATA_FILE).is_file():
            raise ValueError(f"{path} is not an `unimedclip embed` output: it has no {METADATA_FILE}.")
        return datasets.load_from_disk(str(path)), json.loads((path / METADATA_FILE).read_text())
    from huggingface_hub import hf_hub_download

    metadata = hf_hub_download(str(name_or_path), METADATA_FILE, repo_type="dataset", revision=revision)
    embeddings = datasets.load_dataset(str(name_or_path), split="train", revision=revision)
    return embeddings, json.loads(Path(metadata).read_text())


class EmbeddingIndex:
    """Nearest neighbours by cosine similarity over a collection's normalised embeddings."""

    def __init__(self, embeddings, *, exact: bool = False, index_factory: str | None = None):
        if EMBEDDING_COLUMN not in embeddings.column_names:
            raise ValueError(f"The dataset has no {EMBEDDING_COLUMN!r} column; columns: {embeddings.column_names}.")
        if not len(embeddings):
            raise ValueError("The collection holds no embeddings.")
        if index_factory is not None and (exact or not faiss_available()):
            raise ValueError("--index-factory needs FAISS (`pip install faiss-cpu`) and no --exact.")
        self.embeddings = embeddings
        self.uses_faiss = not exact and faiss_available()
        if self.uses_faiss:
            import faiss

            embeddings.add_faiss_index(
                EMBEDDING_COLUMN, string_factory=index_factory, metric_type=faiss.METRIC_INNER_PRODUCT
            )
            self.kind = f"FAISS {index_factory or 'Flat'} index"
        else:
            # Through Arrow: fixed-size lists flatten without copying, where the NumPy format takes seconds per 100k.
            column = embeddings.with_format("arrow")[:].column(EMBEDDING_COLUMN).combine_chunks()
            self.matrix = column.flatten().to_numpy().reshape(len(embeddings), -1)
            self.kind = "exact search"

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dimension(self) -> int:
        return self.embeddings.features[EMBEDDING_COLUMN].length

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row indices) of the `k` nearest rows to one normalised query, best first."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise ValueError(
                f"The query has {query.shape[0]} dimensions, the collection {self.dimension}: it was embedded by "
                "another model."
            )
        k = min(k, len(self))
        if k < 1:
            raise ValueError(f"top-k must be positive, got {k}.")
        if self.uses_faiss:
            scores, indices = self.embeddings.search(EMBEDDING_COLUMN, query, k=k)
            found = np.asarray(indices) >= 0  # approximate indexes may find fewer than k
            return np.asarray(scores)[found], np.asarray(indices)[found]
        scores = self.matrix @ query
        nearest = np.argpartition(-scores, k - 1)[:k]
        nearest = nearest[np.argsort(-scores[nearest], kind="stable")]
        return scores[nearest], nearest


def text_query(text_model, processor, text: str) -> np.ndarray:
    """The normalised embedding of a description by the text tower (`UniMedCLIPTextModelWithProjection`)."""
    return text_embeddings(text_model, processor, [text])[0].cpu().numpy()


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    search = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    search.add_argument("embeddings", help="An `unimedclip embed` output directory or Hub dataset id.")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="Find the images this describes.")
    query.add_argument("--image", type=Path, help="Find the images like this one (image or DICOM file).")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--model", help="Embed the query with this model (default: the collection's own).")
    search.add_argument("--revision", help="Hub revision of the embeddings dataset.")
    search.add_argument("--exact", action="store_true", help="Exact search in NumPy even when FAISS is installed.")
    search.add_argument("--index-factory", help="A FAISS index factory string, e.g. HNSW32 (default: exact Flat).")
    search.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    search.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return search


def query_embedding(args: argparse.Namespace, model: str, revision: str | None) -> np.ndarray:
    if args.text is not None:
        text_model = load_tower(UniMedCLIPTextModelWithProjection, model, revision).to(args.device)
        return text_query(text_model, AutoProcessor.from_pretrained(model, revision=revision), args.text)
    vision = load_tower(UniMedCLIPVisionModelWithProjection, model, revision).to(args.device)
    image_processor = AutoImageProcessor.from_pretrained(model, revision=revision)
    return image_embeddings(vision, image_processor, [args.image])[0].cpu().numpy()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    try:
        embeddings, metadata = load_embeddings(args.embeddings, args.revision)
        index = EmbeddingIndex(embeddings, exact=args.exact, index_factory=args.index_factory)
        model, revision = args.model or metadata["model"], None if args.model else metadata["revision"]
        if args.model and args.model != metadata["model"]:
            print(f"unimedclip search: the collection was embedded by {metadata['model']}.", file=sys.stderr)
        scores, rows = index.search(query_embedding(args, model, revision), args.top_k)
    except (ValueError, OSError) as error:
        raise SystemExit(f"unimedclip search: {error}") from None

    source = ImageSource(metadata["source"])
    references = embeddings.select_columns([source.reference_column])[rows.tolist()][source.reference_column]
    results = [
        {"rank": rank, "score": float(score), source.reference_column: reference}
        for rank, (score, reference) in enumerate(zip(scores, references), start=1)
    ]
    if args.json:
        print(json.dumps({"collection": metadata["source"], "search": index.kind, "results": results}, indent=2))
        return 0
    where = metadata["source"].get("root") or f"{metadata['source']['dataset']} ({metadata['source']['split']})"
    print(f"{len(results)} nearest of {len(index)} images in {where}, by {index.kind}:")
    for result in results:
        print(f"  {result['rank']:3d}  {result['score']:.4f}  {result[source.reference_column]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
