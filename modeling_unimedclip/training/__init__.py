"""Training UniMed-CLIP (`train.py`): configuration and presets, the distributed contrastive loss, optimizer and
schedule, atomic resumable checkpoints, background Hub uploads and the periodic zero-shot evaluation."""
