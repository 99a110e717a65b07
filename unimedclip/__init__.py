"""UniMed-CLIP, Hugging Face-native: the library around the model.

The model itself (configuration, model, processors) is the remote-code bundle `modeling_unimedclip`, which ships next
to the weights; importing this package registers it with the transformers auto classes. The library's concerns:

    unimedclip.variants     one record per released variant
    unimedclip.modalities   the imaging modalities, one meaning per name
    unimedclip.paper        the paper's citation
    unimedclip.data         UniMed: source registry, shard records, the resumable training stream
    unimedclip.training     train.py's configuration, loss, optimizer, checkpoints, uploads
    unimedclip.evaluation   the 21-dataset zero-shot suite: catalog, prompts, readers, evaluator, metrics, baselines
    unimedclip.inference    zero-shot helpers, volumes, embedding and search, the predict, embed and search commands
    unimedclip.release      conversion, open_clip export, model and dataset cards, Hub uploads
    unimedclip.cli          `unimedclip <command>`
"""

import modeling_unimedclip  # noqa: F401  (registers UniMed-CLIP with the transformers auto classes)
