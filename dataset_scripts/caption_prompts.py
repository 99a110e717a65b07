"""Per-modality prompts, caption templates and finding synonyms for the caption generator (`caption_prompts.json`)."""

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROMPTS_FILE = Path(__file__).with_name("caption_prompts.json")

# Labels that mean "nothing abnormal": a label set made only of these is captioned as a normal image.
NORMAL_LABELS = frozenset(
    {"normal", "no finding", "no findings", "healthy", "no abnormality", "unremarkable", "negative", "no disease"}
)


@dataclass(frozen=True)
class ModalityPrompts:
    modality: str
    image: str
    specialist: str
    image_nouns: tuple[str, ...]
    findings: dict[str, tuple[str, ...]]  # canonical finding -> synonyms


@cache
def _prompts_file() -> dict:
    return json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))


def prompt_version() -> str:
    return _prompts_file()["version"]


def caption_modalities() -> tuple[str, ...]:
    return tuple(_prompts_file()["modalities"])


def modality_prompts(modality: str) -> ModalityPrompts:
    modalities = _prompts_file()["modalities"]
    if modality not in modalities:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(modalities)}")
    spec = modalities[modality]
    return ModalityPrompts(
        modality=modality,
        image=spec["image"],
        specialist=spec["specialist"],
        image_nouns=tuple(spec["image_nouns"]),
        findings={name: tuple(synonyms) for name, synonyms in spec["findings"].items()},
    )


def readable_label(label: str) -> str:
    """`Pleural_Effusion` -> `pleural effusion`; acronyms such as `ARMD` keep their case."""
    words = label.replace("_", " ").split()
    return " ".join(word if word.isupper() and len(word) > 1 else word.lower() for word in words)


def is_normal_label(label: str) -> bool:
    return readable_label(label).lower() in NORMAL_LABELS


def findings_of(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The readable abnormal findings of a label set; empty for a normal image (CheXpert pairs "No Finding" with
    "Support Devices", so normal labels are dropped rather than contradicting the others)."""
    return tuple(readable_label(label) for label in labels if not is_normal_label(label))


def join_findings(findings: tuple[str, ...]) -> str:
    return findings[0] if len(findings) == 1 else ", ".join(findings[:-1]) + " and " + findings[-1]


def build_messages(modality: str, findings: tuple[str, ...], n: int) -> list[dict[str, str]]:
    """The chat asking an instruct model for `n` captions of an image with `findings` (none: a normal image)."""
    prompts, spec = _prompts_file(), modality_prompts(modality)
    if findings:
        user = prompts["user_findings"].format(n=n, image=spec.image, findings=join_findings(findings))
    else:
        user = prompts["user_normal"].format(n=n, image=spec.image)
    return [
        {"role": "system", "content": prompts["system"].format(specialist=spec.specialist)},
        {"role": "user", "content": user},
    ]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_captions(modality: str, findings: tuple[str, ...]) -> list[str]:
    """Every distinct caption the templates give, in a fixed order whose first entries vary the most."""
    prompts, spec = _prompts_file(), modality_prompts(modality)
    frames = prompts["finding_frames"] if findings else prompts["normal_frames"]
    nouns = spec.image_nouns
    captions = []
    # Frame i % F with noun i % N visits every (frame, noun) pair when F and N are coprime (6 and 5 here), so
    # consecutive captions differ in both; multi-finding sets also rotate which finding comes first.
    for i in range(len(frames) * len(nouns)):
        noun = nouns[i % len(nouns)]
        rotation = i % len(findings) if findings else 0
        listed = join_findings(findings[rotation:] + findings[:rotation]) if findings else ""
        text = frames[i % len(frames)].format(
            image=noun, Image=_capitalize(noun), findings=listed, Findings=_capitalize(listed)
        )
        captions.append(re.sub(r"\s+", " ", text))
    return list(dict.fromkeys(captions))
