"""Training UniMed-CLIP (`train.py`): configuration and presets, initialisation, the contrastive losses, optimizer
and schedule, atomic resumable checkpoints, background Hub uploads, the periodic zero-shot evaluation, the
device-side record of a logging interval, model FLOPs and MFU, and the profile of the calls that wait."""
