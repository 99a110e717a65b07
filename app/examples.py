"""The Space's own examples, generated rather than downloaded: synthetic pictures from the demo's painters
(`dataset_scripts/synthetic.py`, the images `make demo` trains on) written in the formats the app reads, and a small
gallery for the Search tab."""

from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dataset_scripts.synthetic import FINDINGS, brain_mri, chest_xray, fundus, liver_ct

GALLERY_PER_FINDING = 3


@dataclass(frozen=True)
class Example:
    path: Path
    modality: str
    labels: str
    window: str  # a preset name of the app's window menu


def write_examples(directory: Path, seed: int = 0) -> list[Example]:
    """Write one example per format into `directory`: PNG, 16-bit TIFF, JPEG, DICOM (CT in Hounsfield units) and a
    NIfTI CT volume of 20 slices."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    examples = []

    path = directory / "chest_xray.png"
    Image.fromarray(chest_xray(rng, pneumonia=True)).save(path)
    examples.append(Example(path, "xray", "pneumonia, normal chest", "file"))

    path = directory / "brain_mri_16bit.tif"
    gray = brain_mri(rng)[..., 0].astype(np.uint16)
    Image.fromarray(gray * 200 + 1000).save(path)  # a 16-bit range, as MR exports have
    examples.append(Example(path, "mri", "brain tumor, normal brain", "file"))

    path = directory / "fundus.jpg"
    Image.fromarray(fundus(rng, glaucoma=True)).save(path, quality=92)
    examples.append(Example(path, "fundus", "glaucoma, normal retina", "file"))

    path = directory / "liver_ct.dcm"
    write_ct_dicom(path, hounsfield(liver_ct(rng)))
    examples.append(Example(path, "ct", "liver lesion, normal liver", "liver"))

    path = directory / "abdomen_ct.nii.gz"
    slices = [hounsfield(liver_ct(rng)) for _ in range(20)]
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)[::-1, ::-1]  # pictures to (x, y, z) voxels on RAS axes
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.int16), np.eye(4)), path)
    examples.append(Example(path, "ct", "liver lesion, normal liver", "abdomen"))
    return examples


def write_gallery(directory: Path, per_finding: int = GALLERY_PER_FINDING, seed: int = 1) -> Path:
    """`directory/<finding>/<n>.png` for every synthetic finding: a collection to search."""
    rng = np.random.default_rng(seed)
    for finding, (paint, _, _) in FINDINGS.items():
        folder = directory / finding.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_finding):
            Image.fromarray(paint(rng)).save(folder / f"{index}.png")
    return directory


def hounsfield(picture: np.ndarray) -> np.ndarray:
    """A synthetic CT picture (8-bit gray) in Hounsfield units: air outside the body, soft tissue around 0 HU, the
    liver brighter and a lesion darker, so that CT windows change what is visible."""
    gray = picture[..., 0] / 255.0
    return np.where(gray < 0.1, -1000.0, (gray - 0.55) * 600.0).round()


def write_ct_dicom(path: Path, hounsfield_units: np.ndarray) -> None:
    """A single-frame CT DICOM file: unsigned 16-bit stored values with RescaleIntercept -1024, the abdomen window."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.SeriesInstanceUID = "CT", generate_uid()
    dataset.Rows, dataset.Columns = hounsfield_units.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.WindowCenter, dataset.WindowWidth = 40, 400
    dataset.PixelData = (hounsfield_units + 1024).astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
