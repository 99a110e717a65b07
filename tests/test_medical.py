"""Medical inputs: DICOM (LUTs, windows, MONOCHROME1, frames, compression), NIfTI volumes, DICOM series, and the
`unimedclip predict` CLI."""

import json
import random

import nibabel
import numpy as np
import pydicom
import pytest
import torch
from conftest import images
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from modeling_unimedclip import UniMedCLIPImageProcessor, UniMedCLIPModel, UniMedCLIPProcessor
from modeling_unimedclip.dicom_unimedclip import read_dicom, window_values
from modeling_unimedclip.image_processing_unimedclip import dicom_to_pil
from unimedclip.cli import main as cli_main
from unimedclip.inference.volumes import load_volume, sample_slices
from unimedclip.inference.zero_shot import expand_labels

# Stored values, and Hounsfield units after RescaleSlope 1 / RescaleIntercept -1024.
STORED = np.array([[0, 1000, 1024, 2024, 4000, 1064]], dtype=np.uint16)
# LINEAR window 40/400 (PS3.3 C.11.2.1.2.1) worked by hand: HU <= -160 -> 0; HU > 239 -> 255;
# -24 -> ((-24 - 39.5) / 399 + 0.5) * 255 = 86.92; 0 -> 102.26; 40 -> 127.82.
ABDOMEN_BY_HAND = [0, 87, 102, 255, 255, 128]


def write_dicom(path, pixels: np.ndarray, **attributes) -> Dataset:
    """A minimal uncompressed CT DICOM file; `attributes` set or override elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.SeriesInstanceUID = "CT", "1.2.826.0.1.3680043.8.498.1"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    dataset.ImagePositionPatient, dataset.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    if frames > 1:
        dataset.NumberOfFrames = frames
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attributes.items():
        setattr(dataset, key, value)
    dataset.save_as(path, enforce_file_format=True)
    return dataset


def test_window_functions_match_hand_computed_values():
    values = [-200, -160, 39.5, 40, 239, 240, 1000]
    linear = [0, 0, 127.5, 127.5 + 255 * 0.5 / 399, 255, 255, 255]
    np.testing.assert_allclose(window_values(values, 40, 400), linear, atol=1e-9)
    np.testing.assert_allclose(window_values([-160, 40, 240], 40, 400, "LINEAR_EXACT"), [0, 127.5, 255], atol=1e-9)
    np.testing.assert_allclose(window_values([40, 140], 40, 400, "SIGMOID"), [127.5, 255 / (1 + np.exp(-1))])
    with pytest.raises(ValueError, match="Unknown VOI LUT function 'GAMMA'"):
        window_values(values, 40, 400, "GAMMA")


def test_rescale_and_window_preset(tmp_path):
    write_dicom(tmp_path / "ct.dcm", STORED)
    assert np.asarray(dicom_to_pil(tmp_path / "ct.dcm", window="abdomen")).tolist() == [ABDOMEN_BY_HAND]
    assert np.asarray(dicom_to_pil(tmp_path / "ct.dcm", window=(40, 400))).tolist() == [ABDOMEN_BY_HAND]


def test_window_from_the_file_and_real_range_without_one(tmp_path):
    write_dicom(tmp_path / "windowed.dcm", STORED, WindowCenter=40, WindowWidth=400)
    assert np.asarray(dicom_to_pil(tmp_path / "windowed.dcm")).tolist() == [ABDOMEN_BY_HAND]
    write_dicom(tmp_path / "plain.dcm", STORED)
    expected = np.round((STORED - 0.0) * 255 / 4000).astype(np.uint8)  # HU range -1024..2976, same span as stored
    assert np.array_equal(np.asarray(dicom_to_pil(tmp_path / "plain.dcm")), expected)


def test_voi_lut_sequence(tmp_path):
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 12]  # stored values 0..3 -> 12-bit output
    lut.add_new("LUTData", "US", [0, 100, 4000, 4095])
    write_dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3]], np.uint16), RescaleIntercept=0, VOILUTSequence=[lut])
    _, display = read_dicom(tmp_path / "lut.dcm")
    np.testing.assert_allclose(display[0], [[0, 100 * 255 / 4095, 4000 * 255 / 4095, 255]])


def test_monochrome1_is_inverted(tmp_path):
    write_dicom(tmp_path / "m1.dcm", STORED, PhotometricInterpretation="MONOCHROME1", WindowCenter=40, WindowWidth=400)
    assert np.asarray(dicom_to_pil(tmp_path / "m1.dcm")).tolist() == [[255 - v for v in ABDOMEN_BY_HAND]]


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", "INVERSE", True),  # the shape a MONOCHROME1 image carries: inverted once, not twice
        ("MONOCHROME1", "IDENTITY", False),
    ],
)
def test_presentation_lut_shape_decides_the_inversion(tmp_path, photometric, shape, inverted):
    attributes = dict(PhotometricInterpretation=photometric, WindowCenter=40, WindowWidth=400)
    write_dicom(tmp_path / "p.dcm", STORED, PresentationLUTShape=shape, **attributes)
    expected = [255 - v for v in ABDOMEN_BY_HAND] if inverted else ABDOMEN_BY_HAND
    assert np.asarray(dicom_to_pil(tmp_path / "p.dcm")).tolist() == [expected]


def test_unknown_presentation_lut_shape_is_an_error(tmp_path):
    write_dicom(tmp_path / "p.dcm", STORED, PresentationLUTShape="SIDEWAYS")
    with pytest.raises(ValueError, match="Unknown Presentation LUT Shape 'SIDEWAYS'"):
        dicom_to_pil(tmp_path / "p.dcm")


def test_12_bit_signed_pixels(tmp_path):
    signed = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    path = tmp_path / "signed.dcm"
    write_dicom(path, signed.view(np.uint16), BitsStored=12, HighBit=11, PixelRepresentation=1, RescaleIntercept=0)
    _, display = read_dicom(path)
    np.testing.assert_allclose(display[0], [[0, 255 * 2047 / 4095, 255 * 2048 / 4095, 255]])


def test_pydicom_sample_files_through_the_processor():
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hounsfield = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    lung = np.clip(((hounsfield + 600.5) / 1499 + 0.5) * 255, 0, 255)
    ours = dicom_to_pil(get_testdata_file("CT_small.dcm"), window="lung")
    assert np.array_equal(np.asarray(ours), np.round(lung).astype(np.uint8))
    processor = UniMedCLIPImageProcessor()
    assert torch.equal(
        processor(get_testdata_file("CT_small.dcm"), window="lung").pixel_values, processor(ours).pixel_values
    )

    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert "WindowCenter" in mr
    center, width = float(mr.WindowCenter), float(mr.WindowWidth)
    expected = np.clip(((mr.pixel_array - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    assert np.array_equal(np.asarray(dicom_to_pil(mr)), np.round(expected).astype(np.uint8))


def test_multi_frame_policy(tmp_path):
    frames = np.stack([np.full((6, 8), 1024 + 100 * i, dtype=np.uint16) for i in range(3)])
    frames[:, 0, 0] = 0  # a dark corner, so each frame has a range
    write_dicom(tmp_path / "cine.dcm", frames)
    processor = UniMedCLIPImageProcessor(size=32)
    volume = load_volume(tmp_path / "cine.dcm")
    assert volume.shape == (3, 6, 8)
    for index in range(3):
        frame = Image.fromarray(np.round(volume[index]).astype(np.uint8))
        assert torch.equal(processor(tmp_path / "cine.dcm", frame=index).pixel_values, processor(frame).pixel_values)
    with pytest.raises(ValueError, match="has 3 frame\\(s\\); frame 3 does not exist"):
        processor(tmp_path / "cine.dcm", frame=3)


def test_compressed_without_a_decoder_names_what_to_install():
    with pytest.raises(ValueError, match=r"JPEG-lossy\.dcm'.*JPEG Extended.*pip install pylibjpeg"):
        UniMedCLIPImageProcessor()(get_testdata_file("JPEG-lossy.dcm"))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda path: write_dicom(path, STORED, PhotometricInterpretation="HSV"), "unsupported photometric.*'HSV'"),
        (lambda path: _without_pixels(path), "has no pixel data"),
        (lambda path: _truncated(path), "cannot read the pixel data|not a readable DICOM"),
        (lambda path: path.write_text("not a dicom file"), "is not a DICOM file"),
    ],
)
def test_bad_dicom_files_are_clear_errors_naming_the_file(tmp_path, make, match):
    path = tmp_path / "broken.dcm"
    make(path)
    with pytest.raises(ValueError, match=f"broken\\.dcm.*({match})|({match}).*broken\\.dcm"):
        UniMedCLIPImageProcessor()(path)


def _without_pixels(path):
    dataset = write_dicom(path, STORED)
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)


def _truncated(path):
    write_dicom(path, np.zeros((64, 64), dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-3000])


def test_bad_window_options():
    with pytest.raises(ValueError, match="Unknown window preset 'lungs'"):
        UniMedCLIPImageProcessor(window="lungs")
    with pytest.raises(ValueError, match=r"\(center, width\) with width > 0"):
        UniMedCLIPImageProcessor(window=(40, 0))


def _nifti_values() -> np.ndarray:
    x, y, z = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    return (100 * x + 10 * y + z).astype(np.float32)  # voxel (x, y, z) holds "xyz"


def test_nifti_slices_in_display_orientation(tmp_path):
    values = _nifti_values()
    nibabel.save(nibabel.Nifti1Image(values, np.eye(4)), tmp_path / "ras.nii.gz")
    scaled = values * 255 / values.max()
    axial = load_volume(tmp_path / "ras.nii.gz")
    assert axial.shape == (6, 5, 4)
    # Top-left of an axial slice: anterior (largest y) and patient right (largest x in RAS).
    np.testing.assert_allclose(axial[2, 0, 0], scaled[3, 4, 2])
    np.testing.assert_allclose(axial[2, -1, -1], scaled[0, 0, 2])
    coronal, sagittal = (load_volume(tmp_path / "ras.nii.gz", axis=axis) for axis in ("coronal", "sagittal"))
    assert coronal.shape == (5, 6, 4) and sagittal.shape == (4, 6, 5)
    np.testing.assert_allclose(coronal[1, 0, 0], scaled[3, 1, 5])  # superior, patient right
    np.testing.assert_allclose(sagittal[1, 0, 0], scaled[1, 4, 5])  # superior, anterior

    # The same anatomy stored left-posterior-superior reads the same.
    nibabel.save(nibabel.Nifti1Image(values[::-1, ::-1, :].copy(), np.diag([-1, -1, 1, 1])), tmp_path / "lps.nii")
    np.testing.assert_allclose(load_volume(tmp_path / "lps.nii"), axial)

    windowed = load_volume(tmp_path / "ras.nii.gz", window=(200, 100))
    np.testing.assert_allclose(windowed, window_values(load_volume_raw(values), 200, 100))


def load_volume_raw(values: np.ndarray) -> np.ndarray:
    return values[::-1, ::-1, :].transpose(2, 1, 0)


def test_bad_volumes(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.zeros((3, 3), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(ValueError, match="flat.nii' has shape \\(3, 3\\): expected a 3D volume"):
        load_volume(tmp_path / "flat.nii")
    (tmp_path / "junk.nii").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="junk.nii' is not a readable NIfTI volume"):
        load_volume(tmp_path / "junk.nii")
    with pytest.raises(ValueError, match="Unknown axis 'oblique'"):
        nibabel.save(nibabel.Nifti1Image(_nifti_values(), np.eye(4)), tmp_path / "ok.nii")
        load_volume(tmp_path / "ok.nii", axis="oblique")


def _series(directory, overrides: dict | None = None) -> None:
    """Five axial slices 2.5 mm apart, slice k holding the constant 1024 + 100 k, under shuffled file names and with
    InstanceNumber counting down, so that only the positions give the order; `overrides` per slice index."""
    directory.mkdir()
    for k, number in enumerate(random.Random(0).sample(range(100), 5)):
        attributes = {"ImagePositionPatient": [0, 0, 2.5 * k], "InstanceNumber": 5 - k, **(overrides or {}).get(k, {})}
        write_dicom(directory / f"IM{number:04d}.dcm", np.full((4, 4), 1024 + 100 * k, dtype=np.uint16), **attributes)


def test_dicom_series_is_ordered_by_position(tmp_path):
    _series(tmp_path / "series")
    (tmp_path / "series" / "README.txt").write_text("not DICOM")
    volume = load_volume(tmp_path / "series")
    assert volume.shape == (5, 4, 4)
    np.testing.assert_allclose(volume[:, 0, 0], [0, 63.75, 127.5, 191.25, 255])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({2: {"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}}, r"IM\d+\.dcm' has another ImageOrientationPatient"),
        ({4: {"ImagePositionPatient": [0, 0, 20.0]}}, r"Slice spacing jumps to 12.5 mm between .*IM\d+\.dcm"),
        ({3: {"ImagePositionPatient": [0, 0, 5.0]}}, r"IM\d+\.dcm' are at the same position: duplicate"),
        ({1: {"SeriesInstanceUID": "1.2.3.4"}}, "2 different series"),
        ({1: {"Rows": 2, "PixelData": np.zeros((2, 4), np.uint16).tobytes()}}, r"inconsistent series geometry"),
    ],
)
def test_inconsistent_series_are_refused(tmp_path, overrides, match):
    _series(tmp_path / "series", overrides)
    with pytest.raises(ValueError, match=match):
        load_volume(tmp_path / "series")


def test_slice_sampling():
    assert sample_slices(10, count=4) == [0, 3, 6, 9]
    assert sample_slices(3, count=16) == [0, 1, 2]
    assert sample_slices(10, stride=4) == [0, 4, 8]
    assert sample_slices(4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not both"):
        sample_slices(10, count=2, stride=2)
    with pytest.raises(ValueError, match="stride must be positive"):
        sample_slices(10, stride=0)


def test_cli_predict(model_dir, tmp_path, capsys):
    images(1)[0].save(tmp_path / "photo.png")
    write_dicom(tmp_path / "ct.dcm", np.random.default_rng(0).integers(0, 4000, (40, 40)).astype(np.uint16))
    nibabel.save(nibabel.Nifti1Image(_nifti_values(), np.eye(4)), tmp_path / "head.nii.gz")
    labels = ["pneumonia", "liver mass"]
    paths = [tmp_path / "photo.png", tmp_path / "ct.dcm", tmp_path / "head.nii.gz"]
    args = ["predict", *map(str, paths), "--labels", ",".join(labels), "--modality", "ct", "--model", str(model_dir)]
    assert cli_main([*args, "--window", "abdomen", "--slices", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["path"] for result in results] == list(map(str, paths))
    assert [result["kind"] for result in results][:2] == ["image", "image"]
    assert results[2]["kind"] == "volume, 3 of 6 slices, mean pooling"
    for result in results:
        scores = [prediction["score"] for prediction in result["predictions"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-6)

    # The image scores equal an independent computation with the model's forward pass.
    model, processor = (
        UniMedCLIPModel.from_pretrained(model_dir).eval(),
        UniMedCLIPProcessor.from_pretrained(model_dir),
    )
    prompts = expand_labels(labels, "ct")
    assert prompts["pneumonia"][0] == "a CT scan showing pneumonia."
    with torch.no_grad():
        outputs = model(**processor(text=sum(prompts.values(), []), images=tmp_path / "photo.png"))
    classes = torch.nn.functional.normalize(outputs.text_embeds.reshape(2, -1, outputs.text_embeds.shape[-1]).mean(1))
    expected = (model.logit_scale.exp() * outputs.image_embeds @ classes.T).softmax(-1)[0]
    got = {prediction["label"]: prediction["score"] for prediction in results[0]["predictions"]}
    assert [got[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-5)

    assert cli_main([*args[:2], str(tmp_path / "missing.png"), *args[2:]]) == 1
    captured = capsys.readouterr()
    assert "missing.png" in captured.err and "does not exist" in captured.err
    assert "photo.png (image)" in captured.out and "%  pneumonia" in captured.out


def test_cli_predict_goes_on_past_a_decompression_bomb_and_says_what_it_ignores(model_dir, tmp_path, capsys):
    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")  # tens of KB, 400 million pixels decoded
    images(1)[0].save(tmp_path / "photo.png")
    args = ["predict", str(tmp_path / "bomb.png"), str(tmp_path / "photo.png"), "--labels", "pneumonia,normal"]
    assert cli_main([*args, "--model", str(model_dir), "--window", "lung", "--json"]) == 1
    captured = capsys.readouterr()
    assert [result["path"] for result in json.loads(captured.out)] == [str(tmp_path / "photo.png")]
    assert "bomb.png: " in captured.err and "decompression bomb" in captured.err
    assert "photo.png: --window applies to DICOM and NIfTI only; ignored." in captured.err


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("pneumonia,", "Labels must be non-empty"),
        ("pneumonia,normal,pneumonia", r"Labels must be distinct; \['pneumonia'\] appear more than once"),
    ],
)
def test_cli_bad_labels_are_clear_errors(model_dir, tmp_path, labels, message):
    with pytest.raises(SystemExit, match=rf"unimedclip predict: --labels: {message}"):
        cli_main(["predict", str(tmp_path / "x.png"), "--labels", labels, "--model", str(model_dir)])


def test_cli_needs_a_model(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIMEDCLIP_MODEL", raising=False)
    with pytest.raises(SystemExit, match="pass --model DIR_OR_REPO"):
        cli_main(["predict", str(tmp_path / "x.png"), "--labels", "a,b"])
