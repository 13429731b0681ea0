"""Pretrained weights from a user-given file: `load_pretrained(params, batch_stats, path)`.

Places-LT starts from an ImageNet-pretrained ResNet-152 in the papers (CP-Mix appendix
B.2.3, Table 5; Kang et al. 2020; Liu et al. 2019), and the OTmix code starts ImageNet-LT
and iNaturalist from torchvision's ImageNet ResNet-50 (`resnet50(pretrained=True)` in
imagenet_train.py / iNat18_train.py). ltjax ships no weights: the experiment configs take a
path, `--config.model.pretrained=PATH`, and the trainer calls `load_pretrained` on the
freshly initialised state (`create_state`).

Accepted files, each holding {"params": ..., "batch_stats": ...} in the model's own layout
(flax module names, e.g. "params/backbone/stage0/block0/conv1/kernel"):

- an orbax checkpoint directory (`orbax.checkpoint.StandardCheckpointer().save(path, tree)`);
  other top-level entries of the tree (an optimiser state, a step) are ignored;
- a flax msgpack file (`flax.serialization.msgpack_serialize(tree)`), any suffix but .npz;
- a `.npz` file whose keys are the '/'-joined paths ("params/backbone/...",
  "batch_stats/backbone/...").

Every array of the model outside `skip` must be in the file with the model's shape, and the
file may hold nothing else outside `skip`; the first path that breaks this is named in a
`PretrainedMismatchError`. Subtrees whose path has a component in `skip` (by default the
classifier "head", which has another number of classes) keep the model's initialisation.
Loaded arrays take the dtype of the model's arrays.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

from flax import serialization, traverse_util
import numpy as np

PyTree = Any
Flat = dict[str, Any]
COLLECTIONS = ("params", "batch_stats")


class PretrainedMismatchError(ValueError):
  """The pretrained file does not fit the model (a missing, extra or mis-shaped array)."""


def read_pretrained(path: str | os.PathLike) -> Flat:
  """{'/'-joined path: array} of the "params" and "batch_stats" stored at `path`.

  Raises:
    FileNotFoundError: nothing at `path`.
    PretrainedMismatchError: the file holds no "params".
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Pretrained weights {path} not found (config.model.pretrained).")
  if path.is_dir():
    flat = _flatten(_read_orbax(path))
  elif path.suffix == ".npz":
    with np.load(path) as data:
      flat = {key: data[key] for key in data.files}
  else:
    flat = _flatten(serialization.msgpack_restore(path.read_bytes()))
  flat = {k: v for k, v in flat.items() if k.split("/", 1)[0] in COLLECTIONS}
  if not any(k.startswith("params/") for k in flat):
    raise PretrainedMismatchError(f"{path} holds no 'params' (expected a tree "
                                  "{'params': ..., 'batch_stats': ...}).")
  return flat


def _read_orbax(path: pathlib.Path) -> PyTree:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path.resolve())


def _flatten(tree: Mapping[str, Any]) -> Flat:
  return traverse_util.flatten_dict(dict(tree), sep="/")


def _skipped(path: str, skip: Sequence[str]) -> bool:
  return any(part in skip for part in path.split("/")[1:])


def merge_pretrained(model: Flat, loaded: Flat, skip: Sequence[str] = ("head",),
                     source: str = "the pretrained file") -> Flat:
  """`model` with every array outside `skip` replaced by `loaded`'s (flat '/'-joined trees).

  Raises:
    PretrainedMismatchError: naming the first model path missing from `loaded`, the first
      path whose shape differs, or the first path of `loaded` the model does not have.
  """
  out = dict(model)
  for key in sorted(model):
    if _skipped(key, skip):
      continue
    if key not in loaded:
      raise PretrainedMismatchError(f"{key} is missing from {source} (the model has shape "
                                    f"{tuple(np.shape(model[key]))}).")
    value = np.asarray(loaded[key])
    if value.shape != tuple(np.shape(model[key])):
      raise PretrainedMismatchError(f"{key}: {source} has shape {value.shape}, the model "
                                    f"{tuple(np.shape(model[key]))}.")
    out[key] = value.astype(np.asarray(model[key]).dtype)
  extra = sorted(k for k in loaded if k not in model and not _skipped(k, skip))
  if extra:
    raise PretrainedMismatchError(f"{extra[0]} of {source} is not in the model "
                                  f"({len(extra)} such arrays); is it another architecture?")
  return out


def load_pretrained(params: PyTree, batch_stats: PyTree, path: str | os.PathLike, *,
                    skip: Sequence[str] = ("head",)) -> tuple[PyTree, PyTree]:
  """The model's (params, batch_stats) with the pretrained arrays stored at `path`.

  Args:
    params: the model's initial parameters (e.g. `state.params` after `create_state`).
    batch_stats: its BatchNorm statistics (an empty dict for a model without BatchNorm).
    path: an orbax checkpoint directory, a flax msgpack file or a `.npz` of '/'-joined
      names (see the module docstring).
    skip: module names whose subtrees keep the model's values (default: the classifier
      "head", whose number of classes differs from the pretraining's).

  Returns:
    (params, batch_stats) as nested dicts of numpy arrays, in the model's dtypes.

  Raises:
    FileNotFoundError: nothing at `path`.
    PretrainedMismatchError: a missing, extra or mis-shaped array (the message names it).
  """
  model = _flatten({"params": params, "batch_stats": batch_stats or {}})
  merged = merge_pretrained(model, read_pretrained(path), skip, source=str(path))
  tree = traverse_util.unflatten_dict(merged, sep="/")
  return tree.get("params", {}), tree.get("batch_stats", {})
