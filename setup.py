from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="unimedclip",
    version="0.1.0",
    description="UniMed-CLIP, a contrastive vision-language model for six medical imaging modalities, "
    "native to Hugging Face transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0 (code); model weights cc-by-nc-4.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_unimedclip", "unimedclip", "unimedclip.*", "dataset_scripts"]),
    package_data={
        "unimedclip": [
            "inference/prompt_templates.json",
            "release/*_template.md",
            "evaluation/catalog.json",
            "evaluation/prompts/*.json",
            "evaluation/metrics/*/*.py",
        ],
        "dataset_scripts": ["caption_prompts.json", "benchmark_card_template.md"],
    },
    entry_points={
        "console_scripts": ["unimedclip = unimedclip.cli:main"],
        # `unimedclip <name>`: each a `main(argv, prog)` (unimedclip/cli.py).
        "unimedclip.commands": [
            "benchmark = dataset_scripts.benchmark:main",
            "build = dataset_scripts.build:main",
            "caption = dataset_scripts.caption:main",
            "card = unimedclip.release.model_card:main",
            "convert = unimedclip.release.convert:main",
            "embed = unimedclip.inference.embedding:main",
            "evaluate = unimedclip.evaluation.command:main",
            "export = unimedclip.release.export_open_clip:main",
            "import-prompts = unimedclip.evaluation.import_prompts:main",
            "predict = unimedclip.inference.predict:main",
            "publish = unimedclip.release.publish:main",
            "search = unimedclip.inference.search:main",
        ],
    },
    install_requires=[
        "torch>=2.6",
        "transformers>=5.20,<6",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "numpy>=1.26",
        "pillow>=10.0",
        "ftfy>=6.1",
        "pydicom>=3.0",
        "nibabel>=5.0",
        "evaluate>=0.4",
        "scikit-learn>=1.3",
        "tqdm>=4.66",
        "datasets>=5.2",
        "accelerate>=1.10",
        "torchdata>=0.11",
        "tensorboard>=2.15",
        "pyyaml>=6.0",
    ],
    extras_require={
        # open_clip baselines (BiomedCLIP, PMC-CLIP style releases) for `evaluate_zero_shot.py --model hf-hub:...`.
        "openclip": ["open_clip_torch>=3.3,<4"],
        # LoRA fine-tuning (`finetune.py --method lora`).
        "peft": ["peft>=0.17"],
        # The Space (app/): Gradio at the version app/README.md declares to Hugging Face (tests/test_app.py checks).
        "app": ["gradio==6.31.0"],
        # `unimedclip search` uses a FAISS index through datasets when FAISS is installed, else exact NumPy search.
        "faiss": ["faiss-cpu>=1.8"],
        # open_clip_torch is the independent reference implementation for the parity tests and benchmarks;
        # Playwright drives the system's Chromium in the app's browser tests (its own browser downloads are not used).
        "dev": [
            "pytest>=8",
            "open_clip_torch==3.3.0",
            "torchvision",
            "timm",
            "webdataset>=0.2",
            "ruff",
            "gradio==6.31.0",
            "faiss-cpu>=1.8",
            "playwright>=1.50",
            "peft>=0.17",
        ],
    },
)
