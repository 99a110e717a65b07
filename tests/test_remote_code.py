"""Loading a saved directory with `trust_remote_code=True` in a fresh process where this package is not importable,
and the remote code's refusal of transformers 4.x."""

import json
import os
import re
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from conftest import LABELS, images

import modeling_unimedclip
from modeling_unimedclip import UniMedCLIPModel, UniMedCLIPProcessor
from modeling_unimedclip.configuration_unimedclip import MIN_TRANSFORMERS

REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            # The package, and pydicom, which the remote code needs only for DICOM input.
            if name.split(".")[0] in ("modeling_unimedclip", "pydicom"):
                raise ImportError(f"{name} is hidden in this process")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import modeling_unimedclip
        raise SystemExit("the package should not be importable here")
    except ImportError:
        pass

    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline

    directory, labels = sys.argv[1], json.loads(sys.argv[2])
    rng = np.random.default_rng(2)
    batch = [Image.fromarray(rng.integers(0, 256, (40, 47, 3), dtype=np.uint8)) for _ in range(2)]
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**processor(text=labels, images=batch, return_tensors="pt")).logits_per_image
    classifier = pipeline("zero-shot-image-classification", model=directory, trust_remote_code=True)
    fast = AutoProcessor.from_pretrained(directory, trust_remote_code=True, backend="torchvision").image_processor
    print(json.dumps({
        "model_module": type(model).__module__,
        "logits": logits.tolist(),
        "pipeline": classifier(batch[0], candidate_labels=labels),
        "image_processors": [type(processor.image_processor).__name__, type(classifier.image_processor).__name__],
        "fast_image_processor": type(fast).__name__,
        "fast_pixels": fast(batch).pixel_values.tolist(),
    }))
    """
)


def test_remote_code_loads_without_the_package(model_dir, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(model_dir), json.dumps(LABELS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["model_module"].startswith("transformers_modules.")

    model = UniMedCLIPModel.from_pretrained(model_dir).eval()
    processor = UniMedCLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        expected = model(**processor(text=LABELS, images=images(2), return_tensors="pt")).logits_per_image
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, atol=1e-6, rtol=1e-6)
    probabilities = expected.new_tensor([entry["score"] for entry in remote["pipeline"]])
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    # The exact processor by default, also where transformers would pick torchvision; the fast one on request.
    assert remote["image_processors"] == ["UniMedCLIPImageProcessor", "UniMedCLIPImageProcessor"]
    assert remote["fast_image_processor"] == "UniMedCLIPImageProcessorFast"
    exact = processor(images=images(2)).pixel_values
    assert 0 < (torch.tensor(remote["fast_pixels"]) - exact).abs().max() < 0.05


@pytest.mark.parametrize("found", ["4.57.1", "5.0.0", "5.19.3"])
def test_remote_code_refuses_transformers_below_the_floor(monkeypatch, found):
    """4.x mis-loads the vision tower; 5.0-5.19 lack SubConfigSpec: both get our message, not an ImportError of
    transformers' own."""
    monkeypatch.setattr(transformers, "__version__", found)
    configuration_file = os.path.join(os.path.dirname(modeling_unimedclip.__file__), "configuration_unimedclip.py")
    with pytest.raises(ImportError, match=rf"needs transformers>=5\.20, found {re.escape(found)}.*pip install -U"):
        runpy.run_path(configuration_file)


def test_the_floor_is_the_one_setup_py_declares():
    setup = (Path(modeling_unimedclip.__file__).parents[1] / "setup.py").read_text()
    assert f'"transformers>={MIN_TRANSFORMERS},<6"' in setup
