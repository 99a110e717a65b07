"""Evaluate a UniMed-CLIP (or any transformers CLIP-style model) on the paper's 21-dataset zero-shot suite.

    python evaluate_zero_shot.py --model DIR_OR_REPO --data-root DIR [--datasets CT_axial PCAM ...]

The same command as `unimedclip evaluate`; `--help` lists every option, and `unimedclip.evaluation.command` holds it.
"""

from unimedclip.evaluation.command import main

if __name__ == "__main__":
    main()
