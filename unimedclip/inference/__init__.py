"""Using a trained model: zero-shot classification with prompt ensembles, 3D volumes as slice stacks, and the
`unimedclip predict` command."""
