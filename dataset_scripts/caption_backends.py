"""Caption generators: a local instruct model through transformers' text-generation pipeline, an OpenAI-compatible
chat-completions endpoint, and deterministic templates for when no language model is at hand."""

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from dataset_scripts.caption_prompts import build_messages, template_captions

if TYPE_CHECKING:
    from transformers import Pipeline


@dataclass(frozen=True)
class SamplingParameters:
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 512


class CaptionBackend(Protocol):
    name: str  # identifies the generator in the cache key

    def generate(self, modality: str, findings: tuple[str, ...], n: int) -> list[str]:
        """Candidate captions (not yet validated) for an image of `modality` with `findings` (none: normal)."""


_LIST_MARKER = re.compile(r"^\s*(?:[-*•]+|\(?\d+[.):]|caption\s*\d*\s*[:.)-])\s+", re.IGNORECASE)


def split_candidates(text: str) -> list[str]:
    """One candidate per non-empty line, without list markers ("1.", "-", "Caption 2:") or enclosing quotes."""
    lines = (_LIST_MARKER.sub("", line).strip().strip("\"'“”").strip() for line in text.splitlines())
    return [line for line in lines if line]


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """A prompt for a model without a chat template; the trailing "1." makes a base model start the list."""
    return "\n\n".join(message["content"] for message in messages) + "\n\nCaptions:\n1."


class PipelineBackend:
    """A local causal LM through `pipeline("text-generation")`, chatting through its template when it has one."""

    def __init__(self, model: str, sampling: SamplingParameters, device: str | int | None = None):
        self.name = f"transformers:{model}"
        self.model, self.sampling, self.device = model, sampling, device

    @cached_property
    def pipe(self) -> "Pipeline":
        """Loaded on the first generation, so that a run answered entirely from the cache loads no model."""
        from transformers import pipeline

        return pipeline("text-generation", model=self.model, device=self.device, dtype="auto")

    def generate(self, modality: str, findings: tuple[str, ...], n: int) -> list[str]:
        messages = build_messages(modality, findings, n)
        chat = self.pipe.tokenizer is not None and bool(self.pipe.tokenizer.chat_template)
        outputs = self.pipe(
            messages if chat else plain_prompt(messages),
            do_sample=True,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_new_tokens=self.sampling.max_new_tokens,
            return_full_text=False,
        )
        return split_candidates(outputs[0]["generated_text"])


# (url, JSON body, headers) -> decoded JSON response; tests pass a fake.
Transport = Callable[[str, dict, dict[str, str]], dict]


def post_json(url: str, body: dict, headers: dict[str, str], timeout: float = 300) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise RuntimeError(f"{url} answered HTTP {error.code}: {detail}") from error


class ChatCompletionsBackend:
    """Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, TGI, llama.cpp server, Ollama, ...)."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        sampling: SamplingParameters,
        api_key_env: str = "OPENAI_API_KEY",
        transport: Transport = post_json,
    ):
        endpoint = endpoint.rstrip("/")
        self.url = endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"
        self.model, self.sampling, self.transport = model, sampling, transport
        self.name = f"chat-completions:{model}"
        api_key = os.environ.get(api_key_env)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def generate(self, modality: str, findings: tuple[str, ...], n: int) -> list[str]:
        body = {
            "model": self.model,
            "messages": build_messages(modality, findings, n),
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_new_tokens,
        }
        response = self.transport(self.url, body, self.headers)
        try:
            contents = [choice["message"]["content"] or "" for choice in response["choices"]]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{self.url} returned no chat completion: {str(response)[:300]}") from error
        return [candidate for content in contents for candidate in split_candidates(content)]


class TemplateBackend:
    """Fixed per-modality sentence frames; gives the same captions on every run and needs no model."""

    name = "template"

    def generate(self, modality: str, findings: tuple[str, ...], n: int) -> list[str]:
        return template_captions(modality, findings)
