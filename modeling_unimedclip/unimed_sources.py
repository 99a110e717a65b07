"""The 13 sources of the UniMed dataset: one table shared by the shard builders and the streaming loader."""

from dataclasses import dataclass

# The two tar members of a sample in a UniMed shard: `<key>.image`, the image bytes as the source shipped them (one
# member name for every image format, typed `Image()` by the card's declared features), and `<key>.json`, its record.
IMAGE_FIELD = "image"
RECORD_FIELD = "json"

# Dataset configs on the Hub, one per modality, plus `all`. RadImageNet samples go to `ct`, `mri` or `ultrasound`
# by their image path; figure collections (PMC-OA, ROCOv2, LLaVA-Med) are `mixed`.
MODALITIES = ("xray", "ct", "mri", "ultrasound", "pathology", "fundus", "mixed")

# How the loader picks one training caption per sample, following the original training code.
RANDOM_OF_FIRST_10 = "random_of_first_10"  # uniform among the first 10 captions (LLM-generated captions)
REPORT_ELSE_RANDOM_OF_FIRST_10 = "report_else_random_of_first_10"  # the report when present (MIMIC-CXR)
FIRST = "first"  # always the first caption (the source's own caption)
CAPTION_RULES = (RANDOM_OF_FIRST_10, REPORT_ELSE_RANDOM_OF_FIRST_10, FIRST)

# What may be re-hosted. Only `open` images may be uploaded to a public repository; the others are built by each
# user from their own download.
OPEN = "open"
REGISTRATION = "registration"  # free, but behind a request or registration form
RESEARCH_AGREEMENT = "research-agreement"
CREDENTIALED = "credentialed"  # PhysioNet credentialing and data use agreement
LICENSE_CLASSES = (OPEN, REGISTRATION, RESEARCH_AGREEMENT, CREDENTIALED)


@dataclass(frozen=True)
class Source:
    id: str
    name: str
    modality: str  # one of MODALITIES, or "ct/mri/ultrasound" when decided per image
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
            "ct/mri/ultrasound",
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
