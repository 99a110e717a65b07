"""Checks that a generated caption states exactly the findings of its label set.

Text is compared as lowercase word tokens with hyphens split (`x-ray` = `x ray`) and plurals folded (`effusions` =
`effusion`). A finding counts as mentioned when its label or a synonym occurs outside the scope of a negation
("no effusion", "effusion is absent"); any other finding of the vocabulary mentioned that way is a contradiction.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dataset_scripts.caption_prompts import findings_of, is_normal_label, modality_prompts, readable_label

EMPTY, TOO_SHORT, TOO_LONG, NOT_A_CAPTION = "empty", "too_short", "too_long", "not_a_caption"
MISSING_FINDING, CONTRADICTION, DUPLICATE = "missing_finding", "contradiction", "duplicate"

Term = tuple[str, ...]

NEGATION_CUES = frozenset({"no", "not", "without", "absent", "absence", "negative", "free", "nor", "neither"})
NEGATION_AFTER_CUES = frozenset({"absent", "not", "excluded", "resolved"})
# A negation reaches forward over a few words of its own clause ("no effusion or pneumothorax") but not past these.
CLAUSE_BREAKS = frozenset(
    {".", ";", ":", "!", "?", "but", "however", "although", "though", "whereas", "while", "except"}
)
NEGATION_WINDOW, NEGATION_AFTER_WINDOW = 6, 3
NORMAL_WORDS = frozenset({"normal", "unremarkable", "healthy"})
# "no abnormality", "without acute findings": these words state normality when negated.
NEGATED_NORMAL_WORDS = frozenset(
    {"abnormal", "abnormality", "pathological", "pathology", "finding", "disease", "acute"}
)


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase singular words and clause punctuation: `Pleural-effusions.` -> `pleural effusion .`"""
    return [_singular(token) for token in re.findall(r"[a-z0-9]+|[.;:!?]", text.lower().replace("_", " "))]


def dedup_key(caption: str) -> str:
    return " ".join(token for token in tokenize(caption) if token.isalnum())


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    negated: bool


def _negated(tokens: list[str], start: int, end: int) -> bool:
    for index in range(start - 1, max(start - NEGATION_WINDOW, 0) - 1, -1):
        if tokens[index] in CLAUSE_BREAKS:
            break
        if tokens[index] in NEGATION_CUES:
            return True
    for index in range(end, min(end + NEGATION_AFTER_WINDOW, len(tokens))):
        if tokens[index] in CLAUSE_BREAKS:
            break
        if tokens[index] in NEGATION_AFTER_CUES:
            return True
    return False


def find_mentions(tokens: list[str], terms: Iterable[Term]) -> list[Mention]:
    mentions = []
    for term in terms:
        for start in range(len(tokens) - len(term) + 1):
            if tuple(tokens[start : start + len(term)]) == term:
                end = start + len(term)
                mentions.append(Mention(start, end, _negated(tokens, start, end)))
    return mentions


class CaptionValidator:
    """Validates captions for one modality against the label vocabulary of a dataset.

    The vocabulary is the dataset's labels plus the modality's common findings (`caption_prompts.json`), each with its
    synonyms; a caption that asserts one of them outside its label set is rejected.
    """

    def __init__(self, modality: str, dataset_labels: Iterable[str], min_words: int = 3, max_words: int = 60):
        if not 0 < min_words <= max_words:
            raise ValueError(f"need 0 < min_words <= max_words, got {min_words} and {max_words}")
        self.min_words, self.max_words = min_words, max_words
        groups = [(name, *synonyms) for name, synonyms in modality_prompts(modality).findings.items()]
        self._term_groups = [frozenset(tuple(tokenize(text)) for text in group) for group in groups]
        labels = {readable_label(label) for label in dataset_labels if not is_normal_label(label)}
        self._vocabulary = [self.terms_of(label) for label in sorted(labels)]
        self._vocabulary += [group for group in self._term_groups if group not in self._vocabulary]

    def terms_of(self, finding: str) -> frozenset[Term]:
        """The finding with its synonyms, when the finding or one of its synonyms is a known finding."""
        term = tuple(tokenize(finding))
        return next((group for group in self._term_groups if term in group), frozenset({term}))

    def rejection(self, caption: str, labels: tuple[str, ...]) -> str | None:
        """Why `caption` is not a valid caption for an image with `labels`, or None when it is."""
        caption = caption.strip()
        if not caption:
            return EMPTY
        words = len(caption.split())
        if words < self.min_words:
            return TOO_SHORT
        if words > self.max_words:
            return TOO_LONG
        if caption.endswith(":"):  # a preamble such as "Here are ten captions:"
            return NOT_A_CAPTION
        tokens = tokenize(caption)
        findings = [self.terms_of(finding) for finding in findings_of(labels)]
        stated = []
        for terms in findings:
            mentions = [mention for mention in find_mentions(tokens, terms) if not mention.negated]
            if not mentions:
                return MISSING_FINDING
            stated += mentions
        if not findings and not self._states_normal(tokens):
            return MISSING_FINDING
        for terms in self._vocabulary:
            if terms in findings:
                continue
            for mention in find_mentions(tokens, terms):
                # "effusion" inside the stated "pleural effusion" is the same finding, not another one.
                inside_stated = any(s.start <= mention.start and mention.end <= s.end for s in stated)
                if not mention.negated and not inside_stated:
                    return CONTRADICTION
        return None

    @staticmethod
    def _states_normal(tokens: list[str]) -> bool:
        if NORMAL_WORDS.intersection(tokens):
            return True
        return any(mention.negated for mention in find_mentions(tokens, [(word,) for word in NEGATED_NORMAL_WORDS]))
