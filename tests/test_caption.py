"""The LLM-in-the-loop caption generator: inputs, validation, backends, cache and CLI (offline, tiny models)."""

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dataset_scripts import caption
from dataset_scripts.caption_backends import (
    ChatCompletionsBackend,
    PipelineBackend,
    SamplingParameters,
    TemplateBackend,
    split_candidates,
)
from dataset_scripts.caption_cache import CaptionCache, cache_key
from dataset_scripts.caption_inputs import LabelledImage, load_labelled_images, parse_labels
from dataset_scripts.caption_prompts import caption_modalities, findings_of, prompt_version
from dataset_scripts.caption_validation import CaptionValidator, dedup_key

XRAY_LABELS = ["Cardiomegaly", "Edema", "Pleural_Effusion", "Pneumothorax", "No Finding"]


class RecordingBackend:
    """Returns fixed text per call, or the templates, and records every call."""

    def __init__(self, replies: list[list[str]] | None = None, name: str = "recording"):
        self.name, self.replies, self.calls = name, replies, []

    def generate(self, modality: str, findings: tuple[str, ...], n: int) -> list[str]:
        self.calls.append((modality, findings, n))
        if self.replies is None:
            return TemplateBackend().generate(modality, findings, n)
        return self.replies[min(len(self.calls), len(self.replies)) - 1]


@pytest.fixture
def validator() -> CaptionValidator:
    return CaptionValidator("xray", XRAY_LABELS)


# Validation


@pytest.mark.parametrize(
    "text, labels",
    [
        ("Chest X-ray showing cardiomegaly.", ("Cardiomegaly",)),
        ("Markedly ENLARGED HEART on a frontal radiograph.", ("Cardiomegaly",)),  # synonym, any case
        ("Bilateral pleural-effusions on this chest radiograph.", ("Pleural_Effusion",)),  # plural, hyphen, underscore
        ("Chest X-ray with cardiomegaly and no pneumothorax.", ("Cardiomegaly",)),  # negated finding not in the set
        ("Cardiomegaly without pleural effusion or edema.", ("Cardiomegaly",)),  # negation covers a short list
        ("Normal chest X-ray with clear lungs.", ("No Finding",)),
        ("Consolidative opacity in the right lower lobe.", ("Consolidation",)),  # "opacity" is part of the finding
        ("No acute cardiopulmonary abnormality on this radiograph.", ()),  # an empty label set is normal
        ("Frontal chest X-ray with support devices and edema.", ("No Finding", "Edema", "Support Devices")),
    ],
)
def test_validator_accepts(validator, text, labels):
    assert validator.rejection(text, labels) is None


@pytest.mark.parametrize(
    "text, labels, reason",
    [
        ("", ("Cardiomegaly",), "empty"),
        ("Cardiomegaly.", ("Cardiomegaly",), "too_short"),
        ("Cardiomegaly " + "and more words " * 30, ("Cardiomegaly",), "too_long"),
        ("Here are three captions about cardiomegaly:", ("Cardiomegaly",), "not_a_caption"),
        ("Chest X-ray showing an enlarged liver.", ("Cardiomegaly",), "missing_finding"),
        ("Chest X-ray with no evidence of cardiomegaly.", ("Cardiomegaly",), "missing_finding"),  # negated label
        ("Cardiomegaly seen, but edema is absent.", ("Cardiomegaly", "Edema"), "missing_finding"),
        ("Chest X-ray showing cardiomegaly and a pneumothorax.", ("Cardiomegaly",), "contradiction"),
        ("Chest X-ray showing cardiomegaly and consolidation.", ("Cardiomegaly",), "contradiction"),  # built-in term
        ("Normal chest X-ray apart from small effusions.", ("No Finding",), "contradiction"),
        ("Chest X-ray of a patient in the emergency room.", ("No Finding",), "missing_finding"),
    ],
)
def test_validator_rejects(validator, text, labels, reason):
    assert validator.rejection(text, labels) == reason


def test_dedup_key_ignores_case_punctuation_and_plurals():
    assert dedup_key("Chest X-ray: pleural effusions.") == dedup_key("chest x ray pleural effusion")
    assert dedup_key("Chest X-ray showing edema.") != dedup_key("Chest X-ray showing no edema.")


def test_validator_length_bounds_are_checked():
    with pytest.raises(ValueError, match="min_words"):
        CaptionValidator("xray", [], min_words=10, max_words=5)


def test_caption_label_set_deduplicates_and_counts_rejections(validator):
    replies = [
        [
            "Chest X-ray showing cardiomegaly.",
            "Chest x-ray showing CARDIOMEGALY!",  # a duplicate once normalised
            "Chest X-ray showing a pneumothorax.",
            "Enlarged heart on this chest radiograph.",
        ]
    ]
    captions, rejected = caption.caption_label_set(
        RecordingBackend(replies), validator, "xray", ("Cardiomegaly",), n=3, max_rounds=2
    )
    assert captions == ["Chest X-ray showing cardiomegaly.", "Enlarged heart on this chest radiograph."]
    # Two rounds of the same reply: round 2 repeats every caption.
    assert rejected == Counter({"duplicate": 4, "missing_finding": 2})


def test_caption_label_set_stops_at_n(validator):
    backend = RecordingBackend()
    captions, rejected = caption.caption_label_set(backend, validator, "xray", ("Edema",), n=5, max_rounds=3)
    assert len(captions) == 5 and not rejected and len(backend.calls) == 1


# Template backend


@pytest.mark.parametrize("modality", caption_modalities())
@pytest.mark.parametrize("labels", [("No Finding",), ("Glaucoma",), ("Cardiomegaly", "Edema", "Pneumothorax")])
def test_template_captions_are_valid_and_deterministic(modality, labels):
    validator = CaptionValidator(modality, ["Cardiomegaly", "Edema", "Pneumothorax", "Glaucoma", "No Finding"])
    captions, rejected = caption.caption_label_set(TemplateBackend(), validator, modality, labels, n=10, max_rounds=1)
    assert len(captions) == 10 and not rejected
    assert len({dedup_key(text) for text in captions}) == 10
    assert all(text[0].isupper() and text.endswith(".") and "  " not in text for text in captions)
    for finding in findings_of(labels):
        assert all(finding in text.lower() for text in captions)
    assert captions == caption.caption_label_set(TemplateBackend(), validator, modality, labels, 10, 1)[0]


# OpenAI-compatible backend


def test_chat_completions_request_and_parsing(monkeypatch):
    monkeypatch.setenv("TEST_CAPTION_KEY", "secret")
    requests = []

    def transport(url, body, headers):
        requests.append((url, body, headers))
        return {"choices": [{"message": {"role": "assistant", "content": '1. "Edema on chest X-ray."\n\n- Two.'}}]}

    sampling = SamplingParameters(temperature=0.7, top_p=0.8, max_new_tokens=99)
    backend = ChatCompletionsBackend(
        "http://localhost:8000/v1/", "tiny-model", sampling, api_key_env="TEST_CAPTION_KEY", transport=transport
    )
    assert backend.generate("xray", ("edema",), 4) == ["Edema on chest X-ray.", "Two."]
    url, body, headers = requests[0]
    assert url == "http://localhost:8000/v1/chat/completions"
    assert headers == {"Authorization": "Bearer secret"}
    assert {key: body[key] for key in ("model", "temperature", "top_p", "max_tokens")} == {
        "model": "tiny-model",
        "temperature": 0.7,
        "top_p": 0.8,
        "max_tokens": 99,
    }
    assert [message["role"] for message in body["messages"]] == ["system", "user"]
    assert "4 different" in body["messages"][1]["content"] and "edema" in body["messages"][1]["content"]
    assert "radiologist" in body["messages"][0]["content"]


def test_chat_completions_rejects_unexpected_response(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = ChatCompletionsBackend(
        "http://x/v1/chat/completions", "m", SamplingParameters(), transport=lambda *_: {"error": "overloaded"}
    )
    assert backend.headers == {}
    with pytest.raises(ValueError, match="no chat completion.*overloaded"):
        backend.generate("xray", (), 2)


def test_split_candidates_strips_list_markers():
    text = "Here are captions:\n1. First one.\n(2) Second one.\n* Third.\nCaption 4: Fourth.\n12.5 mm nodule."
    assert split_candidates(text) == [
        "Here are captions:",
        "First one.",
        "Second one.",
        "Third.",
        "Fourth.",
        "12.5 mm nodule.",
    ]


# Local model through the text-generation pipeline


def save_tiny_causal_lm(directory: Path, chat_template: str | None) -> Path:
    words = "chest x ray showing cardiomegaly edema normal no the with and of . captions write findings".split()
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}assistant"


@pytest.mark.parametrize("chat_template", [CHAT_TEMPLATE, None], ids=["chat", "plain"])
def test_pipeline_backend_runs_end_to_end_and_reports_rejections(tmp_path, chat_template, capsys):
    model = save_tiny_causal_lm(tmp_path / "tiny-lm", chat_template)
    folder = make_image_folder(tmp_path / "images", {"cardiomegaly": 2, "normal": 1})
    out = tmp_path / "captions.jsonl"
    argv = ["--dataset", str(folder), "--modality", "xray", "--llm", str(model), "--n", "3"]
    argv += ["--out", str(out), "--max-rounds", "2", "--max-new-tokens", "12", "--device", "cpu"]
    summary = caption.main(argv)
    # Random weights write nonsense: every label set is given up after two rounds, with its rejections counted.
    assert summary.generated == summary.label_sets == summary.incomplete == 2
    assert sum(summary.rejected.values()) >= 1
    assert "incomplete label sets (fewer valid captions than requested): 2" in capsys.readouterr().out
    assert out.exists()


def test_pipeline_backend_uses_chat_template_only_when_present(tmp_path):
    chat = PipelineBackend(str(save_tiny_causal_lm(tmp_path / "chat", CHAT_TEMPLATE)), SamplingParameters())
    plain = PipelineBackend(str(save_tiny_causal_lm(tmp_path / "plain", None)), SamplingParameters())
    prompts = []
    for backend in (chat, plain):
        backend.pipe.preprocess = record_prompt(backend.pipe.preprocess, prompts)
        backend.sampling = SamplingParameters(max_new_tokens=2)
        backend.generate("xray", ("edema",), 2)
    assert type(prompts[0]).__name__ == "Chat" and isinstance(prompts[1], str) and prompts[1].endswith("1.")


def record_prompt(preprocess, prompts: list):
    def wrapper(prompt, *args, **kwargs):
        prompts.append(prompt)
        return preprocess(prompt, *args, **kwargs)

    return wrapper


# Cache


def test_rerun_makes_no_backend_call(tmp_path, validator):
    images = [LabelledImage("a.png", ("Edema",)), LabelledImage("b.png", ("Cardiomegaly", "Edema"))]
    images.append(LabelledImage("c.png", ("Edema", "Cardiomegaly")))  # the same label set as b.png
    first, second = RecordingBackend(), RecordingBackend()
    captions, summary = caption.caption_dataset(
        images, first, "xray", 4, CaptionCache(tmp_path / "c.jsonl"), validator
    )
    assert len(first.calls) == summary.generated == summary.label_sets == 2
    again, summary = caption.caption_dataset(images, second, "xray", 4, CaptionCache(tmp_path / "c.jsonl"), validator)
    assert second.calls == [] and summary.cached == 2 and again == captions


def test_incomplete_label_sets_are_cached_and_retried_on_request(tmp_path, validator):
    images = [LabelledImage("a.png", ("Edema",))]
    cache = CaptionCache(tmp_path / "cache.jsonl")
    silent = RecordingBackend(replies=[[]])
    captions, summary = caption.caption_dataset(images, silent, "xray", 2, cache, validator, max_rounds=2)
    assert captions == {("Edema",): []} and summary.incomplete == 1 and summary.rejected == {"empty": 2}
    caption.caption_dataset(images, silent, "xray", 2, cache, validator, max_rounds=2)
    assert len(silent.calls) == 2
    retried = RecordingBackend()
    captions, summary = caption.caption_dataset(images, retried, "xray", 2, cache, validator, retry_incomplete=True)
    assert len(retried.calls) == 1 and len(captions[("Edema",)]) == 2 and summary.incomplete == 0
    assert CaptionCache(tmp_path / "cache.jsonl").get(cache_key("recording", "xray", ("Edema",), prompt_version(), 2))[
        "complete"
    ]


def test_interrupted_run_resumes_and_truncated_line_is_ignored(tmp_path, validator, caplog):
    images = [LabelledImage(f"{i}.png", (label,)) for i, label in enumerate(["Edema", "Pneumothorax", "Cardiomegaly"])]
    cache_path = tmp_path / "cache.jsonl"

    class CrashingBackend(RecordingBackend):
        def generate(self, modality, findings, n):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().generate(modality, findings, n)

    with pytest.raises(KeyboardInterrupt):
        caption.caption_dataset(images, CrashingBackend(), "xray", 3, CaptionCache(cache_path), validator)
    with cache_path.open("a") as file:
        file.write('{"key": {"backend": "recording", "lab')  # a write cut short by the crash
    resumed = RecordingBackend()
    cache = CaptionCache(cache_path)
    assert cache.unreadable_lines == 1 and "truncated last line" in caplog.text
    captions, summary = caption.caption_dataset(images, resumed, "xray", 3, cache, validator)
    assert resumed.calls == [("xray", ("pneumothorax",), 3)]
    assert summary.cached == 2 and summary.generated == 1 and summary.unreadable_cache_lines == 1
    reloaded = CaptionCache(cache_path)
    assert reloaded.unreadable_lines == 0 and len(reloaded.entries) == 3


def test_cache_key_depends_on_every_input():
    key = cache_key("template", "xray", ("b", "a"), "v1", 10)
    assert key == cache_key("template", "xray", ("a", "b"), "v1", 10)
    variants = [("llm", "xray", ("a", "b"), "v1", 10), ("template", "ct", ("a", "b"), "v1", 10)]
    variants += [("template", "xray", ("a",), "v1", 10), ("template", "xray", ("a", "b"), "v2", 10)]
    variants += [("template", "xray", ("a", "b"), "v1", 5)]
    assert all(cache_key(*variant) != key for variant in variants)


# Inputs


def make_image_folder(root: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        (root / label).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (4, 4)).save(root / label / f"{index}.png")
    return root


def test_parse_labels():
    assert parse_labels("['Cardiomegaly', 'Edema']") == ("Cardiomegaly", "Edema")
    assert parse_labels("Cardiomegaly|Edema|Cardiomegaly") == ("Cardiomegaly", "Edema")
    assert parse_labels("Edema") == ("Edema",)
    assert parse_labels("") == () and parse_labels(["a", " b "]) == ("a", "b")
    with pytest.raises(ValueError, match="label cell: expected a Python list literal"):
        parse_labels("['Edema'")


def test_image_folder_input(tmp_path):
    root = make_image_folder(tmp_path / "folder", {"glaucoma": 2, "normal": 1})
    (root / "CT" / "lung").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "CT" / "lung" / "x.jpg")
    (root / "notes.txt").write_text("not an image")
    assert load_labelled_images(str(root)) == [
        LabelledImage("CT/lung/x.jpg", ("lung",)),
        LabelledImage("glaucoma/0.png", ("glaucoma",)),
        LabelledImage("glaucoma/1.png", ("glaucoma",)),
        LabelledImage("normal/0.png", ("normal",)),
    ]
    Image.new("RGB", (4, 4)).save(root / "loose.png")
    with pytest.raises(ValueError, match="loose.png lies directly in"):
        load_labelled_images(str(root))


def test_csv_input(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "path,label,Cardiomegaly,Edema\n"
        "\"a.png\",\"['Cardiomegaly', 'Edema']\",1.0,1.0\n"
        "b.png,Effusion|Edema,-1.0,1\n"
        "c.png,No Finding,0.0,\n"
    )
    assert load_labelled_images(str(path)) == [
        LabelledImage("a.png", ("Cardiomegaly", "Edema")),
        LabelledImage("b.png", ("Effusion", "Edema")),
        LabelledImage("c.png", ("No Finding",)),
    ]
    onehot = load_labelled_images(str(path), onehot_columns=["Cardiomegaly", "Edema"])
    assert [image.labels for image in onehot] == [("Cardiomegaly", "Edema"), ("Edema",), ()]
    with pytest.raises(ValueError, match="no column 'finding'; its columns are"):
        load_labelled_images(str(path), label_columns=["finding"])
    path.write_text("path,label\nd.png,\"['Edema'\"\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: label cell: expected a Python list literal"):
        load_labelled_images(str(path))


def test_hf_dataset_inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    names = ["Cardiomegaly", "Edema", "No Finding"]
    features = datasets.Features(
        {"image": datasets.Image(), "findings": datasets.List(datasets.ClassLabel(names=names))}
    )
    picture = tmp_path / "p.png"
    Image.new("RGB", (4, 4)).save(picture)
    multi = datasets.Dataset.from_dict({"image": [str(picture)] * 2, "findings": [[0, 1], [2]]}, features=features)
    datasets.DatasetDict({"train": multi}).save_to_disk(tmp_path / "saved")
    images = load_labelled_images(str(tmp_path / "saved"))
    assert [image.labels for image in images] == [("Cardiomegaly", "Edema"), ("No Finding",)]
    assert [image.path for image in images] == ["train/0", "train/1"]  # rows, which the shard builder reads
    with pytest.raises(ValueError, match="no split 'test'"):
        load_labelled_images(str(tmp_path / "saved"), split="test")

    single = datasets.Dataset.from_dict(
        {"label": [1, 0]}, features=datasets.Features({"label": datasets.ClassLabel(names=["benign", "malignant"])})
    )
    (tmp_path / "parquet").mkdir()
    single.to_parquet(tmp_path / "parquet" / "train.parquet")
    images = load_labelled_images(str(tmp_path / "parquet"))
    assert images == [LabelledImage("train/0", ("malignant",)), LabelledImage("train/1", ("benign",))]


# Command line


def test_cli_with_templates_writes_one_line_per_image_and_reuses_the_cache(tmp_path, capsys):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\na.png,Cardiomegaly|Edema\nb.png,Edema|Cardiomegaly\nc.png,No Finding\n")
    out = tmp_path / "out" / "captions.jsonl"
    argv = ["--dataset", str(csv_path), "--modality", "xray", "--llm", "template", "--n", "10", "--out", str(out)]
    first = caption.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["path"] for record in records] == ["a.png", "b.png", "c.png"]
    assert records[1]["labels"] == ["Edema", "Cardiomegaly"] and records[0]["captions"] == records[1]["captions"]
    assert all(len(record["captions"]) == 10 for record in records)
    assert not any("cardiomegaly" in text.lower() or "edema" in text.lower() for text in records[2]["captions"])
    assert first.generated == 2 and first.incomplete == 0
    assert "label sets: 2 (2 generated, 0 from the cache)" in capsys.readouterr().out
    assert (tmp_path / "out" / "captions.cache.jsonl").exists()
    second = caption.main(argv)
    assert second.generated == 0 and second.cached == 2
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    base = ["--dataset", str(tmp_path), "--llm", "template", "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit):
        caption.main([*base, "--modality", "xray", "--n", "0"])
    assert "--n and --max-rounds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        caption.main([*base, "--modality", "dental"])
    assert "invalid choice: 'dental'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no CSV file"):
        caption.main([*base, "--modality", "xray", "--dataset", str(tmp_path / "missing.csv")])
