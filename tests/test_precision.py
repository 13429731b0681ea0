"""Mixed precision (`get_model(..., dtype="bfloat16")`): float32 state, bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import methods
from ltjax.models import get_model, is_dual_branch

X = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)


def _init(model):
  return model.init(jax.random.key(0), jnp.asarray(X), train=False)


@pytest.mark.parametrize("name", ["small_cnn", "dual_small_cnn"])
def test_variables_are_the_float32_models(name):
  """Same tree, same float32 initial values: checkpoints and masks do not change."""
  low, full = _init(get_model(name, 5, dtype="bfloat16")), _init(get_model(name, 5))
  assert jax.tree.structure(low) == jax.tree.structure(full)
  for a, b in zip(jax.tree.leaves(low), jax.tree.leaves(full)):
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)


def test_convolutions_run_in_bfloat16_and_outputs_are_float32():
  model = get_model("small_cnn", 5, dtype="bfloat16")
  variables = _init(model)
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, X, train=False))(variables))
  convs = [line for line in jaxpr.splitlines() if "conv_general_dilated[" in line]
  assert convs and all("bf16[" in line.split("=")[0] for line in convs)
  out = model.apply(variables, X, train=False)
  assert {k: v.dtype for k, v in out.items()} == {k: jnp.float32 for k in out}


def test_logits_and_gradients_match_float32_to_bfloat16_precision():
  full, low = get_model("small_cnn", 5), get_model("small_cnn", 5, dtype="bfloat16")
  variables = _init(full)
  labels = jnp.arange(4) % 5

  def loss(model, params):
    out, _ = model.apply({**variables, "params": params}, X, train=True,
                         mutable=["batch_stats"])
    logp = jax.nn.log_softmax(out["logits"])
    return -jnp.mean(logp[jnp.arange(4), labels])

  l32, g32 = jax.value_and_grad(lambda p: loss(full, p))(variables["params"])
  l16, g16 = jax.value_and_grad(lambda p: loss(low, p))(variables["params"])
  assert abs(float(l32) - float(l16)) < 2e-2 * abs(float(l32))  # bf16: 8 mantissa bits
  flat32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g32)])
  flat16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(g16)])
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
  cosine = flat32 @ flat16 / np.linalg.norm(flat32) / np.linalg.norm(flat16)
  assert cosine > 0.99


def test_batch_statistics_stay_float32_and_move():
  model = get_model("small_cnn", 5, dtype="bfloat16")
  variables = _init(model)
  _, mutated = model.apply(variables, X, train=True, mutable=["batch_stats"])
  for new, old in zip(jax.tree.leaves(mutated), jax.tree.leaves(variables["batch_stats"])):
    assert new.dtype == jnp.float32
  assert any(not np.allclose(n, o) for n, o in
             zip(jax.tree.leaves(mutated), jax.tree.leaves(variables["batch_stats"])))


def test_wrapped_models_keep_their_kind_and_head():
  dual = get_model("dual_small_cnn", 5, dtype="bfloat16")
  assert is_dual_branch(dual)
  methods.check_compatible(methods.get_recipe("dbn_mix", num_epochs=4), dual)
  ldam = get_model("small_cnn", 5, head="normalized", dtype="bfloat16")
  assert ldam.head == "normalized"
  methods.check_compatible(methods.get_recipe("ldam_drw", num_epochs=4), ldam, X[:1])


def test_unknown_dtype_is_refused():
  with pytest.raises(ValueError, match="Unknown compute dtype 'bf16'"):
    get_model("small_cnn", 5, dtype="bf16")
