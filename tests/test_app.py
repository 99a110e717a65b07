"""The Space (`app/`), driven in headless Chromium as a user would: uploads a PNG and a DICOM file, enters labels,
reads the probability bars and checks them against the model's own probabilities, switches a window preset, runs a
text search and checks it against brute force; bad files get a message. Screenshots of each state are written to the
`app-screenshots` folder of the test run (or $UNIMEDCLIP_APP_SCREENSHOTS), whose path the run prints at the end.

Chromium is Debian's `chromium` package (the project's install step adds it where missing), driven by Playwright,
whose own browser downloads are not used. The app's logic is also tested without the browser: every example file,
volume slice ranges and pooling, the Space's card and requirements, and the layout it is uploaded in."""

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import gradio
import nibabel
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from accelerate.state import AcceleratorState
from conftest import images
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from test_medical import write_dicom

from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor
from modeling_unimedclip.image_processing_unimedclip import dicom_to_pil
from unimedclip.inference import embedding
from unimedclip.inference.volumes import load_volume

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
sys.path.insert(0, str(APP))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import collection  # noqa: E402
import publish  # noqa: E402
from classify import Classifier, model_view, parse_labels  # noqa: E402

import app as space  # noqa: E402

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")
SCREENSHOTS_VARIABLE = "UNIMEDCLIP_APP_SCREENSHOTS"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# On a closed network Chromium's own background connections are refused and can stall it: keep it from making any.
CHROMIUM_ARGUMENTS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # for the page and for `expect`: a loaded CI machine may take seconds per step
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def full_model(model_dir):
    return UniMedCLIPModel.from_pretrained(model_dir).eval(), UniMedCLIPProcessor.from_pretrained(model_dir)


@torch.no_grad()
def reference_classes(full_model, labels: list[str], modality: str) -> torch.Tensor:
    """Per label, the renormalised mean of its normalised prompt embeddings (the shipped templates of `modality`),
    computed directly with the model."""
    model, processor = full_model
    templates = json.loads((ROOT / "unimedclip" / "inference" / "prompt_templates.json").read_text())[modality]
    classes = []
    for label in labels:
        texts = processor(text=[template.format(label) for template in templates])
        prompts = F.normalize(model.get_text_features(**texts).pooler_output, dim=-1)
        classes.append(F.normalize(prompts.mean(dim=0), dim=0))
    return torch.stack(classes)


@torch.no_grad()
def reference_images(full_model, images: list, **image_options) -> torch.Tensor:
    model, processor = full_model
    pixel_values = processor(images=images, **image_options).pixel_values
    return F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


def expected_probabilities(full_model, image, labels: list[str], modality: str, **image_options) -> dict[str, float]:
    """The model's probabilities for one image: softmax of the scaled cosine similarities to the labels."""
    similarities = (
        reference_images(full_model, [image], **image_options)[0] @ reference_classes(full_model, labels, modality).T
    )
    return dict(zip(labels, (full_model[0].logit_scale.exp() * similarities).softmax(dim=0).tolist()))


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if path is None:
        pytest.fail(
            "The browser tests need Chromium: `apt-get install chromium` (the project's install step does it), or "
            "set $CHROMIUM to a Chromium or Chrome executable."
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """The app on the tiny model and its own gallery, served on a free local port: (url, work folder)."""
    workdir = tmp_path_factory.mktemp("app")
    demo = space.prepare(str(model_dir), None, None, workdir)
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    yield url, workdir
    demo.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory, request) -> Path:
    folder = Path(os.environ[SCREENSHOTS_VARIABLE]) if SCREENSHOTS_VARIABLE in os.environ else None
    folder = folder or tmp_path_factory.mktemp("app-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\napp screenshots: {folder}")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGUMENTS)
        yield chrome
        chrome.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(served[0])
    expect(page.locator("#classify")).to_be_visible()
    yield page
    page.close()


def upload(page, element: str, paths: list[Path]) -> None:
    """Upload files into a File component and wait until it lists them (name stem and suffix are separate spans)."""
    page.locator(f"#{element} input[type=file]").set_input_files([str(path) for path in paths])
    names = page.locator(f"#{element} td.filename")
    expect(names).to_have_count(len(paths))
    assert ["".join(name.split()) for name in names.all_text_contents()] == [path.name for path in paths]


def choose(page, element: str, option: str) -> None:
    page.locator(f"#{element} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def classify(page, expected_details: str) -> dict[str, float]:
    """Click Classify, wait for the details to describe this run, and read the bars: {label: value}, in order."""
    page.locator("#classify").click()
    expect(page.locator("#details")).to_contain_text(expected_details)
    expect(page.locator("#probabilities meter").first).to_be_visible()
    bars = page.eval_on_selector_all(
        "#probabilities meter", "meters => meters.map(meter => [meter.getAttribute('aria-label'), meter.value])"
    )
    return dict(bars)


def shown_images(page, element: str) -> list[np.ndarray]:
    """The pixels of the images a gallery shows, fetched as the browser fetched them."""
    sources = page.eval_on_selector_all(f"#{element} img", "images => images.map(image => image.src)")
    return [np.asarray(Image.open(BytesIO(page.request.get(source).body()))) for source in dict.fromkeys(sources)]


def assert_bars_match(bars: dict[str, float], expected: dict[str, float]) -> None:
    assert list(bars) == sorted(expected, key=expected.get, reverse=True)  # sorted, best first
    assert sum(bars.values()) == pytest.approx(1, abs=1e-6)
    for label, value in expected.items():
        assert bars[label] == pytest.approx(value, abs=1e-5), label


def test_classify_a_png(page, full_model, tmp_path, screenshots):
    picture = images(1)[0]
    picture.save(tmp_path / "chest.png")
    page.screenshot(path=screenshots / "01-start.png", full_page=True)
    upload(page, "classify-file", [tmp_path / "chest.png"])
    choose(page, "modality", "X-ray")
    labels = ["pneumonia", "normal chest", "liver mass"]
    page.locator("#labels textarea").fill(", ".join(labels))
    bars = classify(page, "chest.png: 47x40 RGB")
    page.screenshot(path=screenshots / "02-png-classified.png", full_page=True)
    assert_bars_match(bars, expected_probabilities(full_model, picture, labels, "xray"))
    (preview,) = shown_images(page, "model-view")
    np.testing.assert_array_equal(preview, np.asarray(picture))


def test_classify_a_dicom_and_switch_the_window_preset(page, full_model, tmp_path, screenshots):
    rng = np.random.default_rng(3)
    path = tmp_path / "ct.dcm"
    write_dicom(path, rng.integers(0, 2400, (44, 40)), WindowCenter=40, WindowWidth=400)  # HU -1024..1375
    upload(page, "classify-file", [path])
    choose(page, "modality", "CT")
    labels = ["liver mass", "normal chest"]
    page.locator("#labels textarea").fill(", ".join(labels))

    bars = classify(page, "ct.dcm: DICOM, the file's own window")
    page.screenshot(path=screenshots / "03-dicom-file-window.png", full_page=True)
    assert_bars_match(bars, expected_probabilities(full_model, path, labels, "ct"))
    (file_window,) = shown_images(page, "model-view")
    np.testing.assert_array_equal(file_window, np.asarray(dicom_to_pil(path)))

    choose(page, "window", "lung (-600/1500)")
    expect(page.locator("#window-center input")).to_have_value("-600")
    expect(page.locator("#window-width input")).to_have_value("1500")
    bars = classify(page, "ct.dcm: DICOM, window -600/1500")
    page.screenshot(path=screenshots / "04-dicom-lung-window.png", full_page=True)
    assert_bars_match(bars, expected_probabilities(full_model, path, labels, "ct", window="lung"))
    (lung_window,) = shown_images(page, "model-view")
    np.testing.assert_array_equal(lung_window, np.asarray(dicom_to_pil(path, window="lung")))
    assert not np.array_equal(lung_window, file_window)


def test_a_bad_file_gets_a_message_not_a_traceback(page, tmp_path, screenshots):
    (tmp_path / "broken.png").write_text("this is no image")
    upload(page, "classify-file", [tmp_path / "broken.png"])
    page.locator("#labels textarea").fill("pneumonia, normal chest")
    page.locator("#classify").click()
    message = "'broken.png' is not an image file that PIL can read: cannot identify image file 'broken.png'"
    expect(page.locator(".toast-message-text")).to_have_text(message)
    page.screenshot(path=screenshots / "05-bad-file.png")  # the viewport: a full-page shot leaves out the message
    assert "Traceback" not in page.content()


def search_results(page, first_image: str | None = None) -> list[list[str]]:
    """The rows of the results table (rank, score, image), once its first image is `first_image` when given."""
    rows = page.locator("#search-table div[role=row]")  # the Dataframe's data rows (its header is a <tr>)
    expect(rows).to_have_count(8)
    if first_image is not None:
        expect(rows.first.locator("[role=gridcell]").nth(2)).to_have_text(first_image)
    script = "rows => rows.map(row => Array.from(row.querySelectorAll('[role=gridcell]'), cell => cell.innerText))"
    return [[cell.strip() for cell in row] for row in rows.evaluate_all(script)]


def test_search_by_text_and_by_image(page, served, full_model, screenshots):
    root = served[1] / "gallery"
    gallery = sorted(root.rglob("*.png"))
    names = [path.relative_to(root).as_posix() for path in gallery]
    query = "chest x ray showing pneumonia"
    page.get_by_role("tab", name="Search").click()
    expect(page.locator("#collection")).to_contain_text(f"{len(gallery)} images")
    page.locator("#search-text textarea").fill(query)
    page.locator("#search-text-button").click()
    rows = search_results(page)
    page.screenshot(path=screenshots / "06-search-text.png", full_page=True)

    model, processor = full_model
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**processor(text=[query])).pooler_output, dim=-1)[0].numpy()
    embeddings = reference_images(full_model, gallery).numpy()
    scores = embeddings @ text
    nearest = np.argsort(-scores)[:8]
    assert [int(rank) for rank, _, _ in rows] == list(range(1, 9))
    assert [name for _, _, name in rows] == [names[i] for i in nearest]
    np.testing.assert_allclose([float(score) for _, score, _ in rows], scores[nearest], atol=1e-4)
    shown = shown_images(page, "search-gallery")
    assert len(shown) == 8 and np.array_equal(shown[0], np.asarray(Image.open(gallery[nearest[0]])))

    upload(page, "search-file", [gallery[5]])
    page.locator("#search-image-button").click()
    rows = search_results(page, first_image=names[5])
    page.screenshot(path=screenshots / "07-search-image.png", full_page=True)
    scores = embeddings @ embeddings[5]
    nearest = np.argsort(-scores)[:8]
    assert [name for _, _, name in rows] == [names[i] for i in nearest]
    np.testing.assert_allclose([float(score) for _, score, _ in rows], scores[nearest], atol=1e-4)


def test_every_example_reads_and_classifies(tmp_path, full_model):
    examples = space.write_examples(tmp_path)
    assert {example.path.suffix for example in examples} == {".png", ".tif", ".jpg", ".dcm", ".gz"}
    assert Image.open(next(e.path for e in examples if e.path.suffix == ".tif")).mode.startswith("I;16")
    classifier = Classifier(*full_model)
    for example in examples:
        window = None if example.window == space.FILE_WINDOW else example.window
        view = model_view([example.path], window=window)
        labels = [label.strip() for label in example.labels.split(",")]
        probabilities = classifier.probabilities(view, labels, example.modality)
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-6)
        if not view.is_volume:
            expected = expected_probabilities(full_model, example.path, labels, example.modality, window=window)
            assert probabilities == pytest.approx(expected, abs=1e-5)


def test_volume_slice_range_and_max_pooling(tmp_path, full_model):
    rng = np.random.default_rng(0)
    path = tmp_path / "volume.nii.gz"
    nibabel.save(nibabel.Nifti1Image(rng.normal(size=(20, 24, 18)).astype(np.float32), np.eye(4)), path)
    view = model_view([path], first_slice=4, last_slice=15, slices=4)
    indices = [4 + int(round(i)) for i in np.linspace(0, 11, 4)]
    assert view.is_volume and view.captions == [f"slice {i}" for i in indices]
    volume = load_volume(path)
    slices = [np.round(volume[i]).astype(np.uint8) for i in indices]
    assert all(np.array_equal(np.asarray(shown), pixels) for shown, pixels in zip(view.images, slices))

    labels = ["liver mass", "brain tumor"]
    similarities = reference_images(full_model, slices) @ reference_classes(full_model, labels, "ct").T
    best_slice = similarities.max(dim=0).values  # max pooling: per label, its best slice
    expected = (full_model[0].logit_scale.exp() * best_slice).softmax(dim=0).tolist()
    probabilities = Classifier(*full_model).probabilities(view, labels, "ct", pooling="max")
    assert [probabilities[label] for label in labels] == pytest.approx(expected, abs=1e-5)

    with pytest.raises(ValueError, match="The volume has 18 slices \\(0 to 17\\); slices 5 to 18"):
        model_view([path], first_slice=5, last_slice=18)


def test_dicom_series_multi_frame_dicom_and_form_errors(tmp_path):
    rng = np.random.default_rng(1)
    series = []
    for index, z in enumerate([2.0, 0.0, 1.0]):  # files out of slice order
        series.append(tmp_path / f"slice{index}.dcm")
        write_dicom(series[-1], rng.integers(0, 2000, (20, 24)), ImagePositionPatient=[0, 0, z])
    view = model_view(series, window="lung")
    assert view.is_volume and view.captions == ["slice 0", "slice 1", "slice 2"]
    assert view.description.startswith("a DICOM series of 3 files: 3 of slices 0 to 2")
    assert np.array_equal(np.asarray(view.images[0]), np.asarray(dicom_to_pil(series[1], window="lung")))

    write_dicom(tmp_path / "cine.dcm", rng.integers(0, 2000, (5, 20, 24)))
    view = model_view([tmp_path / "cine.dcm"], first_slice=1, slices=2)
    assert view.is_volume and view.captions == ["slice 1", "slice 4"]
    assert np.array_equal(np.asarray(view.images[1]), np.asarray(dicom_to_pil(tmp_path / "cine.dcm", frame=4)))

    with pytest.raises(ValueError, match="at least two labels"):
        parse_labels("pneumonia, ")
    assert parse_labels("a, b\nc") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="needs a center and a width"):
        space.window_of(space.CUSTOM_WINDOW, 40, None)
    assert space.window_of(space.CUSTOM_WINDOW, 40, 400) == (40.0, 400.0)
    with pytest.raises(ValueError, match="Upload an image"):
        model_view([])


def test_the_app_searches_an_embedded_collection_and_its_copies(tmp_path, model_dir, full_model, monkeypatch, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for index, picture in enumerate(images(3)):
        picture.save(folder / f"{index}.png")
    try:
        assert (
            embedding.main(["--image-folder", str(folder), "--model", str(model_dir), "--output", str(tmp_path / "e")])
            == 0
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    query = reference_images(full_model, [folder / "1.png"])[0].numpy()

    local = collection.saved_collection(str(tmp_path / "e"), str(model_dir))
    assert [hit.reference for hit in local.nearest(query, 3)][0] == "1.png"
    assert np.array_equal(np.asarray(local.image("1.png")), np.asarray(images(3)[1]))
    shutil.copytree(folder, tmp_path / "copy")
    (folder / "1.png").unlink()
    copied = collection.saved_collection(str(tmp_path / "e"), str(model_dir), images_root=str(tmp_path / "copy"))
    assert np.array_equal(np.asarray(copied.image("1.png")), np.asarray(images(3)[1]))
    assert "images from `" + str(tmp_path / "copy") in copied.summary()

    collection.saved_collection(str(tmp_path / "e"), "another/model")
    assert "was embedded by " + str(model_dir) in capsys.readouterr().err
    downloaded = collection.load_embeddings(str(tmp_path / "e"))
    monkeypatch.setattr(collection, "load_embeddings", lambda name: downloaded)
    with pytest.raises(ValueError, match="pass --images-root"):
        collection.saved_collection("someone/embeddings", str(model_dir))


def test_space_card_and_requirements():
    card = (APP / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["sdk"] == "gradio" and header["sdk_version"] == gradio.__version__  # the Gradio tested here
    assert (APP / header["app_file"]).is_file() and len(header["short_description"]) <= 60
    assert header["models"] == [space.DEFAULT_MODEL]
    setup = ast.parse((ROOT / "setup.py").read_text())
    call = next(
        node for node in ast.walk(setup) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    install_requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    requirements = [line for line in (APP / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert set(install_requires) <= set(requirements), "the Space installs the project's own requirements"
    assert any(line.startswith("faiss-cpu") for line in requirements)


def test_publish_uploads_a_space_that_runs_without_the_project_installed(tmp_path):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def add_space_variable(self, repo_id, key, value):
            calls.append(("add_space_variable", repo_id, {key: value}))

        def upload_folder(self, *, folder_path, **kwargs):
            shutil.copytree(folder_path, tmp_path / "space")
            calls.append(("upload_folder", kwargs["repo_id"], kwargs["repo_type"]))
            return "https://huggingface.co/spaces/me/app/commit/0"

    publish.publish_space("me/app", model="me/model", api=FakeApi())
    assert calls[0] == (
        "create_repo",
        "me/app",
        {"repo_type": "space", "space_sdk": "gradio", "private": False, "exist_ok": True},
    )
    assert calls[1:] == [
        ("add_space_variable", "me/app", {"UNIMEDCLIP_MODEL": "me/model"}),
        ("upload_folder", "me/app", "space"),
    ]
    staged = tmp_path / "space"
    assert {"app.py", "README.md", "requirements.txt", "unimedclip", "modeling_unimedclip"} <= {
        p.name for p in staged.iterdir()
    }
    assert not list(staged.rglob("__pycache__"))
    # The Space runs app.py from its root: every module the app imports must come from the uploaded copies.
    check = (
        "import sys, app, classify, collection, examples, unimedclip, modeling_unimedclip, dataset_scripts.synthetic\n"
        "outside = [m.__file__ for m in (app, classify, collection, examples, unimedclip, modeling_unimedclip) "
        "if not m.__file__.startswith(sys.argv[1])]\n"
        "assert not outside, outside"
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run(
        [sys.executable, "-c", check, str(staged)], cwd=staged, capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
