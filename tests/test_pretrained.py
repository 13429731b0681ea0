"""ltjax.models.pretrained: pretrained weights from orbax / msgpack / npz, head kept."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from ltjax.models import get_model
from ltjax.models.pretrained import PretrainedMismatchError, load_pretrained


def _variables(num_classes: int, seed: int, widths=(8, 16)) -> dict:
  model = get_model("small_cnn", num_classes, widths=widths)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)), train=False)
  return jax.tree.map(np.asarray, {"params": variables["params"],
                                   "batch_stats": variables["batch_stats"]})


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree, sep="/")


def _save(tree: dict, path, fmt: str):
  if fmt == "msgpack":
    path = path / "weights.msgpack"
    path.write_bytes(serialization.msgpack_serialize(tree))
  elif fmt == "npz":
    path = path / "weights.npz"
    np.savez(path, **_flat(tree))
  else:
    import orbax.checkpoint as ocp
    path = path / "ckpt"
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path.resolve(), tree)
  return path


@pytest.mark.parametrize("fmt", ["msgpack", "npz", "orbax"])
def test_round_trip_same_model(tmp_path, fmt):
  saved = _variables(10, seed=0)
  target = _variables(10, seed=1)
  params, stats = load_pretrained(target["params"], target["batch_stats"],
                                  _save(saved, tmp_path, fmt), skip=())
  got = _flat({"params": params, "batch_stats": stats})
  assert got.keys() == _flat(saved).keys()
  for key, value in _flat(saved).items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_head_of_another_size_keeps_the_models_own(tmp_path):
  saved = _variables(1000, seed=0)  # e.g. ImageNet pretraining
  target = _variables(365, seed=1)  # e.g. Places-LT
  params, stats = load_pretrained(target["params"], target["batch_stats"],
                                  _save(saved, tmp_path, "msgpack"))
  got, want, init = _flat(params), _flat(saved["params"]), _flat(target["params"])
  for key in got:
    expected = init[key] if key.startswith("head/") else want[key]
    np.testing.assert_array_equal(got[key], expected, err_msg=key)
  assert got["head/fc/kernel"].shape == (16, 365)
  for key, value in _flat(stats).items():
    np.testing.assert_array_equal(value, _flat(saved["batch_stats"])[key])


def test_shape_mismatch_names_the_path(tmp_path):
  path = _save(_variables(10, seed=0, widths=(8, 32)), tmp_path, "npz")
  target = _variables(10, seed=1, widths=(8, 16))
  with pytest.raises(PretrainedMismatchError,
                     match=r"batch_stats/backbone/stage1/block0/bn/mean: .* shape \(32,\), "
                           r"the model \(16,\)"):
    load_pretrained(target["params"], target["batch_stats"], path)


def test_missing_and_extra_arrays_are_named(tmp_path):
  saved = _flat(_variables(10, seed=0))
  target = _variables(10, seed=1)
  missing = {k: v for k, v in saved.items() if k != "params/backbone/stage0/block0/conv/kernel"}
  np.savez(tmp_path / "missing.npz", **missing)
  with pytest.raises(PretrainedMismatchError,
                     match="params/backbone/stage0/block0/conv/kernel is missing"):
    load_pretrained(target["params"], target["batch_stats"], tmp_path / "missing.npz")
  np.savez(tmp_path / "extra.npz", **saved, **{"params/backbone/stage9/w": np.zeros(3)})
  with pytest.raises(PretrainedMismatchError, match="params/backbone/stage9/w .* not in the"):
    load_pretrained(target["params"], target["batch_stats"], tmp_path / "extra.npz")


def test_loaded_arrays_take_the_models_dtype(tmp_path):
  saved = jax.tree.map(lambda x: x.astype(np.float16), _variables(10, seed=0))
  target = _variables(10, seed=1)
  params, _ = load_pretrained(target["params"], target["batch_stats"],
                              _save(saved, tmp_path, "npz"))
  assert {v.dtype for v in _flat(params).values()} == {np.dtype(np.float32)}


def test_missing_file_and_file_without_params(tmp_path):
  target = _variables(10, seed=1)
  with pytest.raises(FileNotFoundError, match="config.model.pretrained"):
    load_pretrained(target["params"], target["batch_stats"], tmp_path / "nope.msgpack")
  np.savez(tmp_path / "other.npz", **{"opt_state/mu": np.zeros(3)})
  with pytest.raises(PretrainedMismatchError, match="holds no 'params'"):
    load_pretrained(target["params"], target["batch_stats"], tmp_path / "other.npz")
