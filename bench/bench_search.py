"""Search latency of `unimedclip search`'s index over 100,000 embeddings: exact in NumPy, and FAISS through `datasets`.

    python bench/bench_search.py [--vectors 100000] [--dimension 512] [--queries 200] [--top-k 10]

The collection is clustered unit vectors of the B/16 embedding size, as `unimedclip embed` stores them; queries are
new vectors around the same centres. Measures the time to build each index and the per-query latency (median and 95th
percentile) of one query at a time, as the Space and the command search, for the exact NumPy fallback, FAISS's exact
`IndexFlatIP` (the default) and an approximate HNSW index, whose recall@k against the exact search is reported.
Results go to bench/results/.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import datasets
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unimedclip.inference.embedding import ImageSource, embeddings_dataset  # noqa: E402
from unimedclip.inference.search import EmbeddingIndex  # noqa: E402

INDEXES = {"numpy exact": {"exact": True}, "faiss Flat": {}, "faiss HNSW32": {"index_factory": "HNSW32"}}


def unit_vectors(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    vectors = rng.normal(size=(count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, count: int, dimension: int, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around `clusters` fixed centres (cosine about 0.9 to their centre), as embeddings of a collection
    group by modality and finding; pure noise would make every neighbour beyond the first a near tie."""
    centres = unit_vectors(np.random.default_rng(12345), clusters, dimension)
    vectors = centres[rng.integers(clusters, size=count)] + 0.5 * unit_vectors(rng, count, dimension)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dimension", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()

    rng = np.random.default_rng(0)
    vectors, queries = clustered(rng, args.vectors, args.dimension), clustered(rng, args.queries, args.dimension)
    source = ImageSource({"kind": "folder", "root": "."})
    references = [f"{index:06d}.png" for index in range(args.vectors)]

    report = {"vectors": args.vectors, "dimension": args.dimension, "queries": args.queries, "top_k": args.top_k}
    exact_rows = None
    for name, options in INDEXES.items():
        collection = embeddings_dataset(source, references, vectors)
        start = time.perf_counter()
        index = EmbeddingIndex(collection, **options)
        build_seconds = time.perf_counter() - start
        latencies, rows = [], []
        for query in queries:
            start = time.perf_counter()
            _, found = index.search(query, args.top_k)
            latencies.append(time.perf_counter() - start)
            rows.append(set(found.tolist()))
        exact_rows = exact_rows or rows
        report[name] = {
            "build_s": build_seconds,
            "median_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "recall": float(np.mean([len(a & b) / args.top_k for a, b in zip(rows, exact_rows)])),
        }
        result = report[name]
        print(
            f"{name:13s} build {result['build_s']:6.2f} s, per query median {result['median_ms']:7.2f} ms, "
            f"p95 {result['p95_ms']:7.2f} ms, recall@{args.top_k} {result['recall']:.3f}"
        )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "search.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
