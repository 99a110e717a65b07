"""The imaging modalities UniMed-CLIP covers, by the one key every part of the project uses for them.

`MODALITIES` are the six imaging modalities: the prompt ensembles, the caption framework, the evaluation catalog and
the model card's tables are keyed by them. UniMed's figure collections (PMC-OA, ROCOv2, LLaVA-Med) mix modalities
within one source; their samples carry `MIXED`, so a UniMed sample's modality is one of `DATA_MODALITIES`.
"""

MODALITIES: dict[str, str] = {
    "xray": "X-ray",
    "ct": "CT",
    "mri": "MRI",
    "ultrasound": "Ultrasound",
    "pathology": "Histopathology",
    "fundus": "Fundus",
}
MIXED = "mixed"
DATA_MODALITIES = (*MODALITIES, MIXED)
