"""FASL data layer: meta.json builders and reader, the torch Dataset, k-shot sampling,
augmentations and the synthetic dataset generator.

Builders run as scripts: ``python data/mvtec.py --data_root DIR``, ``python data/visa.py --data_root
DIR``, ``python data/synthetic.py --out DIR --layout mvtec``. This package never imports
``models/``.

The public names below are imported lazily (PEP 562) so that the builders, which only need
``data.meta``, start without importing torch.
"""
from importlib import import_module

_EXPORTS = {
    "AnomalyDataset": "data.dataset", "Sample": "data.dataset",
    "OPENAI_CLIP_MEAN": "data.images", "OPENAI_CLIP_STD": "data.images",
    "ImageReadError": "data.images", "image_to_tensor": "data.images",
    "load_image": "data.images", "load_mask": "data.images",
    "load_kshot": "data.kshot", "load_reference_images": "data.kshot",
    "sample_kshot": "data.kshot", "save_kshot": "data.kshot", "stable_hash": "data.kshot",
    "MetaError": "data.meta", "load_meta": "data.meta", "validate_meta": "data.meta",
    "write_meta": "data.meta",
    "generate": "data.synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
