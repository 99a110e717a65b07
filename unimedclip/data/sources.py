"""The sources of UniMed: one table of the 13 original sources, shared by the shard builders, the dataset card and
the model card, plus sources of one's own (labelled images captioned by `dataset_scripts/caption.py`)."""

import re
from dataclasses import dataclass

from ..modalities import DATA_MODALITIES

# How the loader picks one training caption per sample, following the original training code; with the words the
# cards use for each rule.
RANDOM_OF_FIRST_10 = "random_of_first_10"  # uniform among the first 10 captions (LLM-generated captions)
REPORT_ELSE_RANDOM_OF_FIRST_10 = "report_else_random_of_first_10"  # the report when present (MIMIC-CXR)
FIRST = "first"  # always the first caption (the source's own caption)
CAPTION_RULES = {
    RANDOM_OF_FIRST_10: "LLM captions of the labels",
    REPORT_ELSE_RANDOM_OF_FIRST_10: "report, else LLM captions",
    FIRST: "the source's caption",
}

# What may be re-hosted. Only `open` images may be uploaded to a public repository; the others are built by each
# user from their own download.
OPEN = "open"
REGISTRATION = "registration"  # free, but behind a request or registration form
RESEARCH_AGREEMENT = "research-agreement"
CREDENTIALED = "credentialed"  # PhysioNet credentialing and data use agreement
PRIVATE = "private"  # a user's own images: never re-hosted unless declared open
LICENSE_CLASSES = {
    OPEN: "open download",
    REGISTRATION: "free, after registration or request",
    RESEARCH_AGREEMENT: "research use agreement",
    CREDENTIALED: "PhysioNet credentialed access and data use agreement",
    PRIVATE: "the builder's own data",
}
# Modality of RadImageNet, decided per image by its CT/MR/US folder.
PER_IMAGE_MODALITY = "ct/mri/ultrasound"


@dataclass(frozen=True)
class Source:
    id: str
    name: str
    modality: str  # one of DATA_MODALITIES, or PER_IMAGE_MODALITY
    caption_rule: str
    license_class: str
    pairs: int  # pairs in the original UniMed training mix (shard count x 1000, an upper bound)
    homepage: str

    @property
    def redistributable(self) -> bool:
        return self.license_class == OPEN


SOURCES: dict[str, Source] = {
    source.id: source
    for source in (
        Source(
            "radimagenet",
            "RadImageNet",
            PER_IMAGE_MODALITY,
            RANDOM_OF_FIRST_10,
            REGISTRATION,
            1_049_000,
            "https://www.radimagenet.com",
        ),
        Source(
            "chexpert",
            "CheXpert (frontal)",
            "xray",
            RANDOM_OF_FIRST_10,
            RESEARCH_AGREEMENT,
            212_000,
            "https://stanfordmlgroup.github.io/competitions/chexpert/",
        ),
        Source("openi", "OpenI chest X-rays", "xray", FIRST, OPEN, 7_000, "https://openi.nlm.nih.gov/faq"),
        Source(
            "chestxray8",
            "ChestX-ray8 (NIH)",
            "xray",
            RANDOM_OF_FIRST_10,
            OPEN,
            113_000,
            "https://nihcc.app.box.com/v/ChestXray-NIHCC",
        ),
        Source(
            "mimic_cxr",
            "MIMIC-CXR-JPG (frontal)",
            "xray",
            REPORT_ELSE_RANDOM_OF_FIRST_10,
            CREDENTIALED,
            270_000,
            "https://physionet.org/content/mimic-cxr-jpg/",
        ),
        Source("rocov2", "ROCOv2 (train)", "mixed", FIRST, OPEN, 61_000, "https://zenodo.org/records/10821435"),
        Source("pmc_oa", "PMC-OA", "mixed", FIRST, OPEN, 1_645_000, "https://huggingface.co/datasets/axiong/pmc_oa"),
        Source(
            "llava_med_alignment",
            "LLaVA-Med alignment (500k filtered)",
            "mixed",
            FIRST,
            OPEN,
            468_000,
            "https://github.com/microsoft/LLaVA-Med",
        ),
        Source(
            "llava_med_instruct",
            "LLaVA-Med instruct figures",
            "mixed",
            FIRST,
            OPEN,
            265_000,
            "https://github.com/microsoft/LLaVA-Med",
        ),
        Source(
            "quilt_1m", "Quilt-1M", "pathology", FIRST, REGISTRATION, 1_018_000, "https://zenodo.org/records/8239942"
        ),
        Source(
            "retina_flair",
            "Retina collection (FLAIR datasets)",
            "fundus",
            RANDOM_OF_FIRST_10,
            OPEN,
            155_000,
            "https://github.com/jusiro/FLAIR",
        ),
        Source(
            "retina_deepeyenet",
            "DeepEyeNet",
            "fundus",
            FIRST,
            OPEN,
            13_000,
            "https://github.com/Jhhuangkay/DeepOpht-Medical-Report-Generation-for-Retinal-Images-via-Deep-Models-and-Visual-Explanation",
        ),
        Source(
            "retina_mm_retinal", "MM-Retinal", "fundus", FIRST, OPEN, 6_000, "https://github.com/lxirich/MM-Retinal"
        ),
    )
}


def get_source(source_id: str) -> Source:
    try:
        return SOURCES[source_id]
    except KeyError:
        raise ValueError(f"Unknown UniMed source {source_id!r}; known sources: {', '.join(SOURCES)}.") from None


def captioned_source(source_id: str, modality: str, license_class: str = PRIVATE, homepage: str = "") -> Source:
    """A source of one's own: labelled images of one modality with captions generated from their labels by
    `dataset_scripts/caption.py`, used as the LLM-captioned UniMed sources are (one of the first 10 captions)."""
    if source_id in SOURCES:
        raise ValueError(f"{source_id!r} is one of UniMed's own sources; give your data another id.")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", source_id):
        raise ValueError(f"A source id is lowercase letters, digits and underscores; got {source_id!r}.")
    if modality not in DATA_MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; choose one of {DATA_MODALITIES}.")
    if license_class not in LICENSE_CLASSES:
        raise ValueError(f"Unknown licence class {license_class!r}; choose one of {list(LICENSE_CLASSES)}.")
    return Source(source_id, source_id, modality, RANDOM_OF_FIRST_10, license_class, 0, homepage)
