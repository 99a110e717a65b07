"""UniMed-CLIP in the browser: zero-shot classification of medical images and volumes, and search over a collection.

    python app/app.py --model demo_output/run/final                 # `make app`, on the model `make demo` trains
    python app/app.py --model ORG/unimed-clip-vit-b16 --embeddings my_embeddings [--images-root DIR]

The Classify tab reads PNG, JPEG, TIFF (16-bit too), DICOM and NIfTI uploads, shows them as the model sees them after
windowing, and the probabilities of the labels, each expanded with the shipped prompt ensemble of the modality. The
Search tab finds the nearest images of a collection written by `unimedclip embed` (--embeddings), or of the app's own
synthetic gallery, to a description or to an uploaded image. On a Hugging Face Space this file is the app; the model
is $UNIMEDCLIP_MODEL, or the released B/16.
"""

import argparse
import html
import os
import tempfile
from pathlib import Path

import gradio as gr
import torch
from classify import Classifier, model_view, parse_labels
from collection import Collection, gallery_collection, saved_collection
from examples import Example, write_examples, write_gallery
from transformers import AutoModel, AutoProcessor

from modeling_unimedclip.dicom_unimedclip import WINDOW_PRESETS
from unimedclip.inference.predict import MODEL_ENVIRONMENT_VARIABLE
from unimedclip.inference.volumes import AXES
from unimedclip.inference.zero_shot import POOLINGS, TEMPLATES, image_embeddings, text_embeddings
from unimedclip.modalities import MODALITIES
from unimedclip.variants import VARIANTS

DEFAULT_MODEL = VARIANTS["b16"].repo_id
GENERIC = "generic"  # the prompt ensemble for labels of no stated modality
FILE_WINDOW, CUSTOM_WINDOW = "file", "custom"
WINDOW_CHOICES = [
    ("File's own window", FILE_WINDOW),
    *((f"{name} ({center:g}/{width:g})", name) for name, (center, width) in WINDOW_PRESETS.items()),
    ("Custom: center and width below", CUSTOM_WINDOW),
]
MODALITY_CHOICES = [("Any (generic prompts)", GENERIC), *((title, key) for key, title in MODALITIES.items())]
# Volume settings of the form, also used for examples, which set only the file, modality, labels and window.
AXIS, FIRST_SLICE, LAST_SLICE, SLICES, POOLING = "axial", 0, None, 16, "mean"
ERRORS = (ValueError, TypeError, ImportError, OSError)  # bad input: shown in the page, with the reader's message
INTRODUCTION = """# UniMed-CLIP
Zero-shot classification and search for X-ray, CT, MRI, ultrasound, histopathology and fundus images with
[UniMed-CLIP](https://arxiv.org/abs/2412.10372). Model: `{model}`. For research; not for diagnosis."""


def window_of(preset: str, center: float | None, width: float | None):
    """The window the form describes: None (the file's own), a preset name, or (center, width)."""
    if preset == FILE_WINDOW:
        return None
    if preset != CUSTOM_WINDOW:
        return preset
    if center is None or width is None:
        raise ValueError("A custom window needs a center and a width.")
    return float(center), float(width)


def preset_values(preset: str) -> tuple[gr.Number, gr.Number]:
    """The center and width fields for a chosen window: hidden for the file's own, the values of a preset (which
    editing turns into a custom window), kept as they are for a custom one."""
    if preset == FILE_WINDOW:
        return gr.Number(None, visible=False), gr.Number(None, visible=False)
    if preset == CUSTOM_WINDOW:
        return gr.Number(visible=True), gr.Number(visible=True)
    center, width = WINDOW_PRESETS[preset]
    return gr.Number(center, visible=True), gr.Number(width, visible=True)


def readable(error: Exception, paths: list[str]) -> str:
    """The error's message for the page, naming uploads by their file name rather than by Gradio's upload folder.
    Escaped, since Gradio renders error messages as HTML (and would strip a leading or trailing quote)."""
    message = str(error)
    for path in paths:
        message = message.replace(path, os.path.basename(path))
    return html.escape(message)


def upload_paths(files) -> list[str]:
    return [os.fspath(file) for file in (files if isinstance(files, list) else [files] if files else [])]


def build_demo(model, processor, model_name: str, collection: Collection, examples: list[Example]) -> gr.Blocks:
    classifier = Classifier(model, processor)

    def classify(files, modality, labels, preset, center, width, axis, first_slice, last_slice, slices, pooling):
        paths, modality = upload_paths(files), modality or GENERIC
        try:
            window = window_of(preset, center, width)
            labels = parse_labels(labels)
            view = model_view(
                paths,
                window=window,
                axis=axis,
                first_slice=int(first_slice or 0),
                last_slice=None if last_slice is None else int(last_slice),
                slices=int(slices),
            )
            probabilities = classifier.probabilities(view, labels, None if modality == GENERIC else modality, pooling)
        except ERRORS as error:
            raise gr.Error(readable(error, paths), print_exception=False) from None
        prompts = len(TEMPLATES[modality])
        details = f"**{view.description}**  \n{len(labels)} labels x {prompts} prompts ({modality} ensemble)"
        if view.is_volume:
            details += f", slices pooled by {pooling}"
        return probabilities, list(zip(view.images, view.captions)), details

    def classify_example(files, modality, labels, preset):
        return classify(files, modality, labels, preset, None, None, AXIS, FIRST_SLICE, LAST_SLICE, SLICES, POOLING)

    def results(query, top_k):
        hits = collection.nearest(query, int(top_k))
        gallery = []
        for hit in hits:
            try:
                gallery.append((collection.image(hit.reference), f"{hit.score:.3f} · {hit.reference}"))
            except ERRORS as error:  # moved or deleted since it was embedded: still listed in the table
                gr.Warning(html.escape(f"{hit.reference}: {error}"))
        return gallery, [[hit.rank, round(hit.score, 4), str(hit.reference)] for hit in hits]

    def search_text(text, top_k):
        if not (text or "").strip():
            raise gr.Error("Describe the images to find first.", print_exception=False)
        return results(text_embeddings(model, processor, [text])[0].cpu().numpy(), top_k)

    def search_image(files, top_k):
        paths = upload_paths(files)
        if not paths:
            raise gr.Error("Upload an image to find images like it.", print_exception=False)
        try:
            return results(image_embeddings(model, processor, paths[:1])[0].cpu().numpy(), top_k)
        except ERRORS as error:
            raise gr.Error(readable(error, paths), print_exception=False) from None

    with gr.Blocks(title="UniMed-CLIP") as demo:
        gr.Markdown(INTRODUCTION.format(model=model_name))
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    files = gr.File(
                        label="Image (PNG, JPEG, TIFF, DICOM) or volume (NIfTI; several DICOM files form a series)",
                        file_count="multiple",
                        elem_id="classify-file",
                    )
                    modality = gr.Dropdown(
                        MODALITY_CHOICES, value=GENERIC, label="Modality (its prompt ensemble)", elem_id="modality"
                    )
                    labels = gr.Textbox(
                        label="Labels, separated by commas", placeholder="pneumonia, normal chest", elem_id="labels"
                    )
                    with gr.Accordion("DICOM and CT window", open=True):
                        preset = gr.Dropdown(WINDOW_CHOICES, value=FILE_WINDOW, label="Window", elem_id="window")
                        with gr.Row():
                            center = gr.Number(label="Center (HU)", visible=False, elem_id="window-center")
                            width = gr.Number(label="Width (HU)", visible=False, elem_id="window-width")
                    with gr.Accordion("Volumes", open=False):
                        axis = gr.Dropdown(list(AXES), value=AXIS, label="NIfTI slicing axis")
                        with gr.Row():
                            first_slice = gr.Number(FIRST_SLICE, label="First slice", precision=0, minimum=0)
                            last_slice = gr.Number(LAST_SLICE, label="Last slice (empty: the last)", precision=0)
                        slices = gr.Slider(1, 64, value=SLICES, step=1, label="Slices to use, evenly spaced")
                        pooling = gr.Radio(
                            list(POOLINGS), value=POOLING, label="Pooling (max: findings on few slices)"
                        )
                    classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Column():
                    probabilities = gr.Label(label="Probabilities", elem_id="probabilities")
                    seen = gr.Gallery(
                        label="As the model sees it", format="png", columns=4, height=320, elem_id="model-view"
                    )
                    details = gr.Markdown(elem_id="details")
            inputs = [files, modality, labels, preset, center, width, axis, first_slice, last_slice, slices, pooling]
            outputs = [probabilities, seen, details]
            classify_button.click(classify, inputs, outputs)
            preset.change(preset_values, preset, [center, width])
            gr.on([center.input, width.input], lambda: CUSTOM_WINDOW, outputs=preset)
            gr.Examples(
                [[[str(example.path)], example.modality, example.labels, example.window] for example in examples],
                [files, modality, labels, preset],
                outputs,
                fn=classify_example,
                run_on_click=True,
                label="Synthetic examples (PNG, 16-bit TIFF, JPEG, DICOM, NIfTI)",
            )

        with gr.Tab("Search"):
            gr.Markdown(collection.summary(), elem_id="collection")
            with gr.Row():
                with gr.Column():
                    query = gr.Textbox(label="Describe the images to find", elem_id="search-text")
                    text_button = gr.Button("Search by text", variant="primary", elem_id="search-text-button")
                with gr.Column():
                    query_file = gr.File(label="Or find images like this one", height=120, elem_id="search-file")
                    image_button = gr.Button("Search by image", elem_id="search-image-button")
            size = len(collection.index)
            top_k = gr.Slider(1, min(50, size), value=min(8, size), step=1, label="Images to show")
            found = gr.Gallery(label="Nearest images", format="png", columns=4, height=320, elem_id="search-gallery")
            table = gr.Dataframe(
                headers=["rank", "score", "image"], datatype=["number", "number", "str"], elem_id="search-table"
            )
            gr.on([text_button.click, query.submit], search_text, [query, top_k], [found, table])
            image_button.click(search_image, [query_file, top_k], [found, table])
    return demo


def load_model(name: str):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModel.from_pretrained(name).to(device).eval(), AutoProcessor.from_pretrained(name)


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENVIRONMENT_VARIABLE, DEFAULT_MODEL),
        help=f"UniMed-CLIP directory or Hub id (default: ${MODEL_ENVIRONMENT_VARIABLE}, else {DEFAULT_MODEL}).",
    )
    arguments.add_argument("--embeddings", help="An `unimedclip embed` output to search (default: the app's gallery).")
    arguments.add_argument("--images-root", help="Where the images of a downloaded --embeddings collection are.")
    arguments.add_argument("--host", help="Address to serve on (default: Gradio's, 127.0.0.1 or $GRADIO_SERVER_NAME).")
    arguments.add_argument("--port", type=int, help="Port (default: Gradio's, 7860 or $GRADIO_SERVER_PORT).")
    arguments.add_argument("--share", action="store_true", help="Also serve on a temporary public gradio.live link.")
    return arguments


def prepare(model_name: str, embeddings: str | None, images_root: str | None, workdir: Path) -> gr.Blocks:
    """Load the model, write the examples into `workdir` and build the app over its collection."""
    model, processor = load_model(model_name)
    examples = write_examples(workdir / "examples")
    if embeddings is None:
        collection = gallery_collection(model, processor, model_name, write_gallery(workdir / "gallery"))
    else:
        collection = saved_collection(embeddings, model_name, images_root)
    return build_demo(model, processor, model_name, collection, examples)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="unimedclip-app-") as workdir:
        try:
            demo = prepare(args.model, args.embeddings, args.images_root, Path(workdir))
        except (ValueError, OSError) as error:
            raise SystemExit(f"app: {error}") from None
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False)


if __name__ == "__main__":
    main()
