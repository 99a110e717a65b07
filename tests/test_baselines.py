"""Baselines in the same harness: open_clip models (hf-hub layout) and transformers CLIP models give through
`evaluate_zero_shot.py` the accuracy and AUC computed here with their own libraries, and several models in one run
give a side-by-side table, per dataset and per modality, that the model card shows."""

import json
import shutil
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VISION, make_tiny_bert_config, make_tiny_tokenizer
from PIL import Image
from reference import open_clip_config, open_clip_model
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score
from test_benchmark import write_archive
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from dataset_scripts.benchmark import build_benchmark
from modeling_unimedclip.image_processing_unimedclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from unimedclip.evaluation import DEFAULT_PROMPTS, Evaluator, catalog_dataset, load_catalog
from unimedclip.evaluation import command as evaluate_command
from unimedclip.evaluation.adapters import load_model
from unimedclip.evaluation.comparison import compare, comparison_markdown
from unimedclip.release.export_open_clip import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from unimedclip.release.model_card import Architecture, load_comparison, load_results, render_model_card

# An AUC dataset (binary, ultrasound) and an accuracy one (three classes, fundus), in the archive's layout.
KEYS = ["breast_us", "odir_retina"]
PER_CLASS = 4
OPEN_CLIP_SHAPE = dict(image_size=32, patch_size=8, width=64, layers=2, embed_dim=24)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    write_archive(root, KEYS, PER_CLASS)
    return root


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """The tiny BERT's configuration and tokenizer, initialised widely enough that prompts of different classes get
    different [CLS] states (at the default scale they all point one way, and no score would rank anything)."""
    path = tmp_path_factory.mktemp("tiny-bert")
    config = make_tiny_bert_config()
    config.initializer_range = 0.2
    config.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def save_tiny_open_clip(path, bert_dir, seed: int = 1) -> None:
    """A BiomedCLIP-style open_clip model (ViT + BERT) saved in open_clip's hf-hub layout: config, safetensors
    weights and the tokenizer files (`bert_dir` holds the BERT configuration and tokenizer)."""
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": open_clip_config(bert_dir, **OPEN_CLIP_SHAPE),
        "preprocess_cfg": {"mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD, "interpolation": "bicubic"},
    }
    (path / OPEN_CLIP_CONFIG).write_text(json.dumps(config))
    save_file(open_clip_model(bert_dir, seed=seed, **OPEN_CLIP_SHAPE).state_dict(), path / OPEN_CLIP_WEIGHTS)
    make_tiny_tokenizer().save_pretrained(path)


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory, bert_dir):
    path = tmp_path_factory.mktemp("tiny-open-clip")
    save_tiny_open_clip(path, bert_dir)
    return path


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE without merges: every word is spelt out in byte tokens, as CLIP's tokenizer would."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("</w>", ""):
        for character in sorted(ByteLevel.alphabet()):
            vocab[character + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def save_tiny_clip(path) -> None:
    """A PLIP/PubMedCLIP-style transformers CLIPModel with its CLIPProcessor."""
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**TINY_VISION, "hidden_act": "quick_gelu"},
        projection_dim=24,
    )
    torch.manual_seed(2)
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-clip")
    save_tiny_clip(path)
    return path


def evaluate(model: str, archive, tmp_path, *extra: str) -> dict:
    arguments = ["--model", model, "--data-root", str(archive), "--datasets", *KEYS, "--num-workers", "0"]
    arguments += ["--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *extra]
    return evaluate_command.main(arguments)["results"]


def expected_metrics(scores: torch.Tensor, labels: np.ndarray) -> dict:
    """Accuracy and AUC in percent, by numpy and scikit-learn: the paper's binary AUC from the difference of the two
    class scores, else the macro mean of one-vs-rest AUCs."""
    scores = scores.numpy().astype(np.float64)
    if scores.shape[1] == 2:
        auc = roc_auc_score(labels, scores[:, 1] - scores[:, 0])
    else:
        auc = np.mean([roc_auc_score(labels == c, scores[:, c]) for c in range(scores.shape[1])])
    return {"accuracy": 100 * float((scores.argmax(1) == labels).mean()), "auc": 100 * auc}


def assert_same_metrics(results: dict, expected: dict) -> None:
    for key, metrics in expected.items():
        for name, value in metrics.items():
            assert results[key][name] == pytest.approx(value, abs=1e-9), (key, name)
        # Scores that do not rank the images (AUC 50) could not show a bug: the fixture must be informative.
        assert metrics["auc"] != 50, (key, metrics)


def dataset_of(key, archive):
    samples = catalog_dataset(key, load_catalog()[key], archive).samples
    prompts = json.loads(DEFAULT_PROMPTS.read_text())[key]
    return [sample.image for sample in samples], np.array([sample.label for sample in samples]), prompts


def test_open_clip_model_in_the_hub_layout_matches_open_clip(open_clip_dir, bert_dir, archive, tmp_path):
    results = evaluate(f"local-dir:{open_clip_dir}", archive, tmp_path)
    # Independently: the same weights built in memory, open_clip's own evaluation transform and tokenizer.
    model = open_clip_model(bert_dir, seed=1, **OPEN_CLIP_SHAPE)
    transform = open_clip.image_transform(32, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(bert_dir), context_length=256)
    expected = {}
    with torch.no_grad():
        for key in KEYS:
            files, labels, prompts = dataset_of(key, archive)
            images = F.normalize(model.encode_image(torch.stack([transform(Image.open(f)) for f in files])), dim=-1)
            classes = torch.stack(
                [F.normalize(model.encode_text(tokenizer(texts)), dim=-1).mean(0) for texts in prompts.values()]
            )
            expected[key] = expected_metrics(images @ F.normalize(classes, dim=-1).T, labels)
    assert_same_metrics(results, expected)


def test_transformers_clip_model_matches_its_own_forward_pass(clip_dir, archive, tmp_path):
    results = evaluate(str(clip_dir), archive, tmp_path)
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    expected = {}
    with torch.no_grad():
        for key in KEYS:
            files, labels, prompts = dataset_of(key, archive)
            texts = [text for class_prompts in prompts.values() for text in class_prompts]
            inputs = processor(
                text=texts, images=[Image.open(f) for f in files], padding=True, truncation=True, return_tensors="pt"
            )
            outputs = model(**inputs)
            per_class = torch.split(outputs.text_embeds, [len(p) for p in prompts.values()])
            classes = F.normalize(torch.stack([embeds.mean(0) for embeds in per_class]), dim=-1)
            expected[key] = expected_metrics(outputs.image_embeds @ classes.T, labels)
    assert_same_metrics(results, expected)


def test_one_command_compares_models_side_by_side(model_dir, open_clip_dir, clip_dir, archive, tmp_path, monkeypatch):
    """UniMed-CLIP, an open_clip model named by an `hf-hub:` id (a local folder of that name, as transformers reads
    one) and a transformers CLIP on a small benchmark build: every model and dataset in the table."""
    keys = [*KEYS, "PCAM"]
    write_archive(archive, ["PCAM"], PER_CLASS)
    build_benchmark(archive, tmp_path / "bench", keys)
    shutil.copytree(open_clip_dir, tmp_path / "org" / "tiny-open-clip")
    monkeypatch.chdir(tmp_path)
    models = [str(model_dir), "hf-hub:org/tiny-open-clip", str(clip_dir)]
    arguments = ["--data", "bench", "--model", *models, "--num-workers", "0", "--output", "comparison"]
    outcome = evaluate_command.main([*arguments, "--cache-dir", "cache"])

    names = [model_dir.name, "tiny-open-clip", clip_dir.name]
    saved = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    assert saved["models"] == names and list(saved["datasets"]) == keys
    assert saved["sources"] == dict(zip(names, models, strict=True))
    for name in names:
        report = json.loads((tmp_path / "comparison" / name / "results.json").read_text())
        assert report == json.loads(json.dumps(outcome["reports"][name]))
        for key in keys:
            assert saved["datasets"][key]["values"][name] == report["results"][key]["value"]
        assert saved["average"]["values"][name] == pytest.approx(report["summary"]["average"])
        assert saved["modalities"]["ultrasound"]["values"][name] == report["results"]["breast_us"]["value"]
    assert {modality: row["datasets"] for modality, row in saved["modalities"].items()} == {
        "fundus": 1,
        "pathology": 1,
        "ultrasound": 1,
    }
    table = (tmp_path / "comparison" / "comparison.md").read_text()
    assert table.splitlines()[0] == f"| dataset | modality | metric | {' | '.join(names)} |"
    assert all(any(line.startswith(f"| {key} |") for line in table.splitlines()) for key in keys)
    assert "| breast_us | ultrasound | ROC AUC |" in table

    # The model card shows the comparison beside the model's own results.
    card = render_model_card(
        Architecture.from_directory(model_dir),
        repo_id="org/unimed-clip-tiny",
        results=load_results(tmp_path / "comparison" / model_dir.name / "results.json"),
        comparison=load_comparison(tmp_path / "comparison" / "comparison.json"),
    )
    assert "### Compared with other models" in card.text and table.strip() in card.text
    with pytest.raises(ValueError, match="needs a comparison.json"):
        load_comparison(tmp_path / "comparison" / model_dir.name / "results.json")


def test_comparison_lists_every_model_and_dataset_and_averages_what_all_share():
    def report(values: dict, failed=()) -> dict:
        modality = {"a": "ct", "b": "ct", "c": "mri"}
        results = {
            key: {"value": value, "modality": modality[key], "metric": "accuracy"} for key, value in values.items()
        }
        return {"results": results, "skipped": {}, "failed": {key: "ValueError: bad" for key in failed}}

    one, two = report({"a": 10.0, "b": 30.0, "c": 50.0}), report({"a": 20.0, "c": 40.0}, failed=["b"])
    comparison = compare({"one": one, "two": two})
    assert comparison["datasets"]["b"]["values"] == {"one": 30.0, "two": None}
    assert comparison["average"] == {"datasets": 2, "values": {"one": 30.0, "two": 30.0}}
    assert comparison["modalities"]["ct"] == {"datasets": 1, "values": {"one": 10.0, "two": 20.0}}
    assert comparison["not_evaluated"] == {"one": {}, "two": {"b": "ValueError: bad"}}
    table = comparison_markdown(comparison)
    assert "| a | ct | accuracy | 10.00 | **20.00** |" in table
    assert "| b | ct | accuracy | 30.00 | – |" in table  # a single value is nobody's best
    assert "| c | mri | accuracy | **50.00** | 40.00 |" in table
    assert "| **mean of the 2 datasets every model was evaluated on** | | | 30.00 | 30.00 |" in table  # a tie


def test_text_embedding_cache_tells_open_clip_models_apart(open_clip_dir, bert_dir, tmp_path):
    """Two open_clip models whose text towers differ must never share cached class embeddings."""
    other = tmp_path / "other"
    save_tiny_open_clip(other, bert_dir, seed=5)
    prompts = {"benign": ["a benign lesion"], "malignant": ["a malignant mass", "a tumor"]}
    cached = [
        Evaluator(*load_model(f"local-dir:{path}"), cache_dir=tmp_path / "cache").text_class_embeddings(prompts)
        for path in (open_clip_dir, other)
    ]
    uncached = [
        Evaluator(*load_model(f"local-dir:{path}")).text_class_embeddings(prompts) for path in (open_clip_dir, other)
    ]
    assert torch.equal(cached[0], uncached[0]) and torch.equal(cached[1], uncached[1])
    assert not torch.allclose(cached[0], cached[1])
    assert len(list((tmp_path / "cache").glob("text-*.pt"))) == 2


def test_clear_errors_for_models_that_cannot_be_loaded(open_clip_dir, model_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="does not load as a transformers model .* An open_clip model is named"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such open_clip folder"):
        load_model(f"local-dir:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="revision applies to transformers models only"):
        load_model(f"local-dir:{open_clip_dir}", revision="v1")
    for extra in ([str(model_dir)], ["hf-hub:org/b", "--revision", "v1"], ["hf-hub:org/b", "--task", "linear-probe"]):
        with pytest.raises(SystemExit):
            evaluate_command.main(["--model", str(model_dir), *extra, "--data-root", str(tmp_path)])
    errors = capsys.readouterr().err
    assert "are both named 'unimed-clip-tiny" in errors and "the revision of one model" in errors
    assert "several models are compared on --task zero-shot only, not linear-probe" in errors
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as when the optional extra is not installed
    with pytest.raises(ImportError, match=r'pip install "unimedclip\[openclip\]"'):
        load_model(str(open_clip_dir))
