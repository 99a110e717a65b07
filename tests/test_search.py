"""`unimedclip embed` and `unimedclip search`: embeddings equal the full model's, checkpointed chunks resume, two
processes under `accelerate launch` give the one-process result, and search agrees with brute force in NumPy, with
FAISS and without it."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from conftest import TINY_VISION, images
from PIL import Image
from test_medical import write_dicom
from transformers import CLIPConfig, CLIPModel

from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor
from unimedclip.inference import embedding, search
from unimedclip.inference.embedding import METADATA_FILE, ImageSource, csv_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """`unimedclip embed` run in this process sets up accelerate's process state; other tests set up their own."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def full_model(model_dir):
    return UniMedCLIPModel.from_pretrained(model_dir).eval(), UniMedCLIPProcessor.from_pretrained(model_dir)


@torch.no_grad()
def reference_image_embedding(full_model, image) -> np.ndarray:
    """The full model's normalised image embedding, computed directly."""
    model, processor = full_model
    features = model.get_image_features(pixel_values=processor(images=image).pixel_values).pooler_output
    return F.normalize(features, dim=-1)[0].numpy()


@torch.no_grad()
def reference_text_embedding(full_model, text: str) -> np.ndarray:
    model, processor = full_model
    features = model.get_text_features(**processor(text=[text])).pooler_output
    return F.normalize(features, dim=-1)[0].numpy()


def brute_force(embeddings: np.ndarray, query: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    scores = embeddings.astype(np.float64) @ query.astype(np.float64)
    order = sorted(range(len(scores)), key=lambda row: -scores[row])[:k]
    return order, scores[order]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Images of every kind the command reads, nested, plus an unreadable image and a file that is no image."""
    root = tmp_path_factory.mktemp("collection")
    (root / "xray" / "left").mkdir(parents=True)
    for index, image in enumerate(images(5)):
        image.save(root / "xray" / f"{index}.png")
    images(1)[0].convert("L").save(root / "xray" / "left" / "gray.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65535, (40, 36), dtype=np.uint16)).save(root / "xray" / "left" / "wide.tif")
    (root / "ct").mkdir()
    write_dicom(root / "ct" / "slice.dcm", rng.integers(0, 2000, (30, 34)), WindowCenter=40, WindowWidth=400)
    write_dicom(root / "ct" / "no_suffix", rng.integers(0, 2000, (30, 34)))
    (root / "ct" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return root


def embed(*arguments: str) -> int:
    return embedding.main(["--num-workers", "0", "--batch-size", "3", *arguments])


@pytest.fixture(scope="module")
def embedded(image_folder, model_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("embedded") / "embeddings"
    assert embed("--image-folder", str(image_folder), "--model", str(model_dir), "--output", str(output)) == 0
    return output


def test_embed_folder_holds_the_full_models_embeddings(embedded, image_folder, model_dir, full_model):
    dataset = datasets.load_from_disk(str(embedded))
    metadata = json.loads((embedded / METADATA_FILE).read_text())
    expected_paths = [
        "ct/no_suffix", "ct/slice.dcm", "xray/0.png", "xray/1.png", "xray/2.png", "xray/3.png", "xray/4.png",
        "xray/left/gray.jpg", "xray/left/wide.tif",
    ]  # fmt: skip
    assert dataset["path"] == expected_paths
    assert metadata["source"] == {"kind": "folder", "root": str(image_folder.resolve())}
    assert metadata["model"] == str(model_dir.resolve()) and metadata["dimension"] == 24
    assert metadata["images"] == 9 and [failure["reference"] for failure in metadata["unreadable"]] == [
        "ct/broken.png"
    ]
    assert "broken.png" in metadata["unreadable"][0]["error"]
    stored = np.asarray(dataset.with_format("numpy")["embedding"])
    assert stored.dtype == np.float32
    for path, vector in zip(expected_paths, stored):
        np.testing.assert_allclose(vector, reference_image_embedding(full_model, image_folder / path), atol=1e-5)


def test_search_by_text_and_by_image_matches_brute_force(embedded, image_folder, full_model, capsys):
    stored = np.asarray(datasets.load_from_disk(str(embedded)).with_format("numpy")["embedding"])
    paths = datasets.load_from_disk(str(embedded))["path"]
    queries = {
        ("--text", "chest x ray showing pneumonia"): reference_text_embedding(
            full_model, "chest x ray showing pneumonia"
        ),
        ("--image", str(image_folder / "xray" / "3.png")): reference_image_embedding(
            full_model, image_folder / "xray" / "3.png"
        ),
    }
    for exact in (False, True):
        for query, vector in queries.items():
            assert search.main([str(embedded), *query, "--top-k", "4", "--json", *(["--exact"] * exact)]) == 0
            answer = json.loads(capsys.readouterr().out)
            assert answer["search"] == ("exact search" if exact else "FAISS Flat index")
            rows, scores = brute_force(stored, vector, 4)
            assert [result["path"] for result in answer["results"]] == [paths[row] for row in rows]
            np.testing.assert_allclose([result["score"] for result in answer["results"]], scores, atol=1e-5)
    assert answer["results"][0]["path"] == "xray/3.png" and answer["results"][0]["score"] == pytest.approx(1, abs=1e-5)

    assert search.main([str(embedded), "--text", "liver", "--top-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"2 nearest of 9 images in {image_folder.resolve()}, by FAISS Flat index:"
    assert len(table) == 3 and table[1].split()[0] == "1"


def test_exact_search_and_faiss_agree_with_brute_force_on_many_vectors(monkeypatch):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dataset = embedding.embeddings_dataset(ImageSource({"kind": "folder", "root": "."}), [""] * 2000, vectors)
    query = vectors[7] + 0.5 * vectors[1999]
    query /= np.linalg.norm(query)
    rows, scores = brute_force(vectors, query, 10)
    for index in (search.EmbeddingIndex(dataset), search.EmbeddingIndex(dataset, exact=True)):
        found_scores, found_rows = index.search(query, 10)
        assert found_rows.tolist() == rows
        np.testing.assert_allclose(found_scores, scores, atol=1e-5)
    monkeypatch.setattr(search, "faiss_available", lambda: False)  # faiss-cpu is an optional extra
    fallback = search.EmbeddingIndex(dataset)
    assert fallback.kind == "exact search" and fallback.search(query, 10)[1].tolist() == rows
    assert len(fallback.search(query, 5000)[1]) == 2000
    with pytest.raises(ValueError, match="needs FAISS"):
        search.EmbeddingIndex(dataset, index_factory="HNSW32")
    with pytest.raises(ValueError, match="query has 24 dimensions, the collection 32"):
        fallback.search(np.ones(24, np.float32), 3)


def test_interrupted_embedding_resumes_from_the_saved_chunks(image_folder, model_dir, embedded, tmp_path, monkeypatch):
    output = tmp_path / "embeddings"
    arguments = ["--image-folder", str(image_folder), "--model", str(model_dir), "--output", str(output)]
    embedded_chunks, interrupt_at = [], {2}
    real_embed_chunk = embedding.embed_chunk

    def recorded(index, *args):
        if index in interrupt_at:
            raise KeyboardInterrupt
        embedded_chunks.append(index)
        real_embed_chunk(index, *args)

    monkeypatch.setattr(embedding, "embed_chunk", recorded)
    with pytest.raises(KeyboardInterrupt):
        embed(*arguments, "--chunk-size", "3")
    assert embedded_chunks == [0, 1] and not output.exists()
    partial = sorted(path.name for path in (tmp_path / "embeddings.partial").iterdir())
    assert partial == ["chunk-00000", "chunk-00001", "plan.json"]

    with pytest.raises(SystemExit, match="other settings \\(chunk_size differ\\)"):
        embed(*arguments, "--chunk-size", "4")
    interrupt_at.clear()
    assert embed(*arguments, "--chunk-size", "3") == 0
    assert embedded_chunks == [0, 1, 2, 3]  # chunks 0 and 1 were not embedded twice
    assert not (tmp_path / "embeddings.partial").exists()
    resumed, whole = datasets.load_from_disk(str(output)), datasets.load_from_disk(str(embedded))
    assert resumed["path"] == whole["path"]
    np.testing.assert_array_equal(np.asarray(resumed["embedding"]), np.asarray(whole["embedding"]))
    assert json.loads((output / METADATA_FILE).read_text()) == json.loads((embedded / METADATA_FILE).read_text())
    with pytest.raises(SystemExit, match="exists and is not empty"):
        embed(*arguments)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_under_accelerate_launch_match_one(image_folder, model_dir, embedded, tmp_path):
    output = tmp_path / "embeddings"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "unimedclip.inference.embedding", "--image-folder", str(image_folder), "--model", str(model_dir),
        "--output", str(output), "--chunk-size", "2", "--num-workers", "0",
    ]  # fmt: skip
    # `--multi_gpu` starts the processes with torchrun; ACCELERATE_USE_CPU puts them on the CPU (gloo).
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1 of 2" in result.stderr
    two, one = datasets.load_from_disk(str(output)), datasets.load_from_disk(str(embedded))
    assert two["path"] == one["path"]
    np.testing.assert_allclose(np.asarray(two["embedding"]), np.asarray(one["embedding"]), atol=1e-6)


def test_csv_and_hugging_face_dataset_sources(tmp_path, model_dir, full_model):
    pictures = images(3)
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "b").mkdir()
    for index, (folder, picture) in enumerate(zip("aab", pictures)):
        picture.save(tmp_path / "images" / folder / f"{index}.png")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "list.csv").write_text(
        f"path,label\n../images/a/0.png,x\n../images/a/1.png,y\n{tmp_path / 'images' / 'b' / '2.png'},z\n"
    )
    source, references = csv_source(tmp_path / "tables" / "list.csv")
    assert source.root == (tmp_path / "images").resolve() and references == ["a/0.png", "a/1.png", "b/2.png"]
    output = tmp_path / "from_csv"
    assert (
        embed("--csv", str(tmp_path / "tables" / "list.csv"), "--model", str(model_dir), "--output", str(output)) == 0
    )
    from_csv = datasets.load_from_disk(str(output))

    hub = tmp_path / "hub_dataset"
    rows = datasets.Dataset.from_dict({"picture": pictures}, features=datasets.Features({"picture": datasets.Image()}))
    rows.to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    output = tmp_path / "from_hub"
    arguments = ["--hf-dataset", str(hub), "--image-column", "picture", "--model", str(model_dir)]
    assert embed(*arguments, "--output", str(output)) == 0
    from_hub = datasets.load_from_disk(str(output))
    assert from_hub["row"] == [0, 1, 2]
    metadata = json.loads((output / METADATA_FILE).read_text())
    assert metadata["source"] == {"kind": "hub", "dataset": str(hub), "split": "train", "image_column": "picture"}
    expected = np.stack([reference_image_embedding(full_model, picture) for picture in pictures])
    np.testing.assert_allclose(np.asarray(from_hub["embedding"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(from_csv["embedding"]), expected, atol=1e-5)

    with pytest.raises(SystemExit, match="has no column 'image'"):
        embed("--hf-dataset", str(hub), "--model", str(model_dir), "--output", str(tmp_path / "none"))


def test_a_collection_opens_no_file_outside_its_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.png").write_bytes(b"")
    source = ImageSource({"kind": "folder", "root": str(tmp_path / "root")})
    for reference in ("../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ValueError, match="points outside the collection's root"):
            source.image(reference)
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="points outside"):
        source.image("link.png")


def test_push_to_hub_uploads_the_dataset_and_its_metadata(embedded, monkeypatch):
    pushed, uploaded = [], []
    monkeypatch.setattr(
        datasets.Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, len(self), kw))
    )

    class FakeApi:
        def upload_file(self, **kwargs):
            uploaded.append(kwargs)

    embedding.push_to_hub(embedded, "me/collection", private=True, api=FakeApi())
    assert pushed == [("me/collection", 9, {"private": True})]
    assert uploaded == [
        {
            "path_or_fileobj": str(embedded / METADATA_FILE),
            "path_in_repo": METADATA_FILE,
            "repo_id": "me/collection",
            "repo_type": "dataset",
        }
    ]


def test_bad_input_is_named(tmp_path, model_dir, embedded, image_folder):
    clip = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={**TINY_VISION, "hidden_act": "quick_gelu"},
        projection_dim=24,
    )
    CLIPModel(clip).save_pretrained(tmp_path / "clip")
    with pytest.raises(SystemExit, match="is a 'clip' model, not UniMed-CLIP"):
        embed("--image-folder", str(image_folder), "--model", str(tmp_path / "clip"), "--output", str(tmp_path / "o"))
    assert not (tmp_path / "o.partial").exists()  # nothing started, so a corrected rerun starts afresh
    with pytest.raises(SystemExit, match="does not exist"):
        embed("--image-folder", str(tmp_path / "missing"), "--model", str(model_dir), "--output", str(tmp_path / "o"))
    with pytest.raises(SystemExit, match="holds no images"):
        embed("--image-folder", str(tmp_path), "--model", str(model_dir), "--output", str(tmp_path / "o"))
    shutil.copytree(embedded, tmp_path / "no_metadata")
    (tmp_path / "no_metadata" / METADATA_FILE).unlink()
    with pytest.raises(SystemExit, match=f"has no {METADATA_FILE}"):
        search.main([str(tmp_path / "no_metadata"), "--text", "x"])
    with pytest.raises(SystemExit, match="is not an image file"):
        search.main([str(embedded), "--image", str(tmp_path / "no_metadata" / "state.json")])
