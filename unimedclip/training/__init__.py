"""Training UniMed-CLIP (`train.py`): configuration and presets, initialisation, the contrastive losses, optimizer
and schedule, atomic resumable checkpoints, background Hub uploads and the periodic zero-shot evaluation."""
