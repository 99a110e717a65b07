"""Independent reference: pip open_clip's `CustomTextCLIP` (the original architecture) and original-format files."""

from pathlib import Path

import numpy as np
import open_clip
import torch


def open_clip_config(
    bert_dir: Path, *, image_size: int, patch_size: int, width: int = 128, layers: int = 2, embed_dim: int = 48
) -> dict:
    return {
        "embed_dim": embed_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            "head_width": 64,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "hf_model_name": str(bert_dir),
            "hf_tokenizer_name": str(bert_dir),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "hf_model_pretrained": False,
            "context_length": 256,
        },
    }


def open_clip_model(bert_dir: Path, seed: int = 0, **shape) -> open_clip.CustomTextCLIP:
    """A randomly initialised UniMed-CLIP-shaped open_clip model, with a non-default temperature."""
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**open_clip_config(bert_dir, **shape))
    with torch.no_grad():
        model.logit_scale.fill_(4.2)
        # open_clip initialises some parameters to constants; randomise them so a swapped weight cannot hide.
        for name, parameter in model.named_parameters():
            if "ln" in name or "LayerNorm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def original_checkpoint(model: torch.nn.Module) -> dict:
    """A training checkpoint as the original wrote it: DDP `module.` prefix, `text_encoder.` tower name, optimizer
    state with numpy learning rates, and a GradScaler state."""
    state_dict = {
        "module." + key.replace("text.", "text_encoder.", 1) if key.startswith("text.") else "module." + key: value
        for key, value in model.state_dict().items()
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    optimizer.param_groups[0]["lr"] = np.float64(5e-4)
    return {
        "epoch": 10,
        "name": "unimed-test",
        "state_dict": state_dict,
        "optimizer": optimizer.state_dict(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
    }


def save_numpy1_style(checkpoint: dict, path: Path) -> None:
    """Save in the legacy (non-zip) format with numpy scalars pickled under numpy 1's module name."""
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
