"""Using a trained model: zero-shot classification with prompt ensembles, 3D volumes as slice stacks, collection
embedding and search, and the `unimedclip predict`, `embed` and `search` commands."""
