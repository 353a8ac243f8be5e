"""FASL data layer: meta.json builders and reader, the torch Dataset, k-shot sampling,
augmentations and the synthetic dataset generator.

Builders run as scripts: ``python data/mvtec.py --root DIR``, ``python data/visa.py --root
DIR``, ``python data/synthetic.py --out DIR --layout mvtec``. This package never imports
``models/``.
"""
from data.dataset import AnomalyDataset, Sample
from data.images import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageReadError, image_to_tensor,
                         load_image, load_mask)
from data.kshot import (load_kshot, load_reference_images, sample_kshot, save_kshot,
                        stable_hash)
from data.meta import MetaError, load_meta, validate_meta, write_meta

__all__ = ["AnomalyDataset", "Sample", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "ImageReadError",
           "image_to_tensor", "load_image", "load_mask", "load_kshot", "load_reference_images",
           "sample_kshot", "save_kshot", "stable_hash", "MetaError", "load_meta",
           "validate_meta", "write_meta"]
