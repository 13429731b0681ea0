"""Tests of ltjax.models: output shapes, parameter counts, shortcuts, heads, batch norm,
dual-branch routing and the Forward wrapper."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import models, recipe
from ltjax.models import dual_branch, resnet_cifar, resnet_imagenet, small

K = 10


def _abstract_init(model, x):
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _init(model, x, seed=0):
  """Variables of the model's structure filled on the host (compiling a ResNet init on a
  2-core CPU takes ~10 s): He-normal kernels, unit BN scale and variance, zero bias and
  mean. `test_real_init_*` cover the models' own initialisers."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * std, jnp.float32)
    return (jnp.ones if name in ("scale", "var") else jnp.zeros)(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, _abstract_init(model, x))


def _fast_key(seed=0):
  """A key whose random bits compile quickly on CPU (the initialisers accept any key)."""
  return jax.random.key(seed, impl="unsafe_rbg")


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def cifar_x():
  return _images((2, 32, 32, 3))


@pytest.fixture(scope="module")
def resnet32_vars(cifar_x):
  return _init(models.resnet32(K), cifar_x)


@pytest.fixture(scope="module")
def dual_vars(cifar_x):
  return _init(models.dual_resnet32(K), cifar_x)


# ----------------------------------------------------------------------------- heads


def test_linear_head_matches_numpy():
  z = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
  for kind, has_bias in (("linear", True), ("linear_nobias", False)):
    head = models.make_head(kind, 3)
    params = head.init(_fast_key(1), z)["params"]
    assert ("bias" in params["fc"]) == has_bias
    bias = np.asarray(params["fc"]["bias"], np.float64) if has_bias else 0.0
    want = z.astype(np.float64) @ np.asarray(params["fc"]["kernel"], np.float64) + bias
    np.testing.assert_allclose(head.apply({"params": params}, z), want, rtol=1e-5, atol=1e-5)


def test_normalized_head_is_cosine_and_matches_numpy():
  rng = np.random.default_rng(0)
  z = (rng.normal(size=(6, 8)) * rng.uniform(0.1, 50, size=(6, 1))).astype(np.float32)
  head = models.make_head("normalized", 4)
  params = head.init(_fast_key(1), z)["params"]
  assert set(params) == {"kernel"}
  w = np.asarray(params["kernel"], np.float64)
  z64 = z.astype(np.float64)
  want = (z64 / np.linalg.norm(z64, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
  got = np.asarray(head.apply({"params": params}, z))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # A zero feature gives zero cosines instead of NaN (eps guard as in F.normalize).
  assert np.all(np.asarray(head.apply({"params": params}, np.zeros((1, 8), np.float32))) == 0)


def test_make_head_errors():
  with pytest.raises(ValueError, match="Unknown head 'cosine'"):
    models.make_head("cosine", 3)
  with pytest.raises(ValueError, match="num_classes"):
    models.make_head("linear", 0)


# ------------------------------------------------------------------------ shortcuts


@pytest.mark.parametrize("shape,features,strides", [
    ((2, 8, 8, 16), 32, 2), ((2, 7, 7, 4), 8, 2), ((1, 4, 4, 3), 6, 1), ((1, 4, 4, 5), 5, 2)])
def test_option_a_shortcut_matches_numpy(shape, features, strides):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  sub = x[:, ::strides, ::strides, :]
  want = np.zeros(sub.shape[:3] + (features,), np.float32)
  lo = (features - shape[-1]) // 2
  want[..., lo:lo + shape[-1]] = sub
  np.testing.assert_array_equal(resnet_cifar.option_a_shortcut(jnp.asarray(x), features,
                                                               strides), want)


def test_option_a_shortcut_rejects_channel_reduction():
  with pytest.raises(ValueError, match="cannot reduce channels"):
    resnet_cifar.option_a_shortcut(jnp.zeros((1, 4, 4, 8)), 4, 1)


def test_basic_block_option_a_uses_shortcut_in_forward():
  """A block whose convolutions output zero reduces to relu(option-A shortcut)."""
  block = resnet_cifar.BasicBlock(8, strides=2)
  x = _images((2, 6, 6, 4))
  variables = _init(block, x)
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  assert set(params) == {"conv1", "bn1", "conv2", "bn2"}   # no shortcut parameters
  out = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
  np.testing.assert_allclose(out, jax.nn.relu(resnet_cifar.option_a_shortcut(x, 8, 2)),
                             atol=1e-6)


# ------------------------------------------------------------------ parameter counts


def _resnet_cifar_closed_form(depth: int, num_classes: int) -> int:
  n = (depth - 2) // 6
  conv_bn = lambda c_in, c_out: 9 * c_in * c_out + 2 * c_out
  total = conv_bn(3, 16)
  for c_in, c_out in ((16, 16), (16, 32), (32, 64)):
    total += conv_bn(c_in, c_out) + conv_bn(c_out, c_out)          # first block
    total += (n - 1) * 2 * conv_bn(c_out, c_out)                   # other blocks
  return total + 64 * num_classes + num_classes


def test_resnet32_parameter_count(resnet32_vars):
  assert _count(resnet32_vars["params"]) == 464_154 == _resnet_cifar_closed_form(32, K)
  assert _count(_abstract_init(models.resnet32(K, head="normalized"),
                               jnp.zeros((1, 32, 32, 3)))["params"]) == 464_154 - K


@pytest.mark.parametrize("depth,millions,tol", [(20, 0.27, 0.005), (44, 0.66, 0.005),
                                                (56, 0.85, 0.005), (110, 1.7, 0.05)])
def test_resnet_cifar_depths_match_he_et_al_table6(depth, millions, tol):
  n = _count(_abstract_init(models.ResNetCifar(K, depth=depth),
                            jnp.zeros((1, 32, 32, 3)))["params"])
  assert n == _resnet_cifar_closed_form(depth, K)
  assert abs(n / 1e6 - millions) < tol


@pytest.mark.parametrize("factory,count,dim", [
    (models.resnet10, 5_418_792, 512), (models.resnet18, 11_689_512, 512),
    (models.resnet50, 25_557_032, 2048), (models.resnet152, 60_192_808, 2048)])
def test_imagenet_resnet_counts_and_shapes(factory, count, dim):
  model = factory(1000)
  x = jnp.zeros((2, 64, 64, 3))
  variables = _abstract_init(model, x)
  assert _count(variables["params"]) == count        # torchvision counts for 18 / 50
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert out["logits"].shape == (2, 1000) and out["features"].shape == (2, dim)


def test_dual_stage_layout_adds_exactly_stage3_and_head(resnet32_vars, dual_vars):
  single, dual = resnet32_vars["params"], dual_vars["params"]
  stage3 = _count(single["backbone"]["stage2"])
  head = _count(single["head"])
  assert _count(dual) == _count(single) + stage3 + head == 816_292
  assert jax.tree.map(jnp.shape, dual["branch_r"]["backbone"]["stage2"]) == jax.tree.map(
      jnp.shape, single["backbone"]["stage2"])
  assert set(dual["trunk"]) == {"stem", "stage0", "stage1"}


def test_dual_block_layout_adds_exactly_last_block_and_head(resnet32_vars):
  single = resnet32_vars["params"]
  dual = _abstract_init(models.dual_resnet32(K, layout="block"),
                        jnp.zeros((1, 32, 32, 3)))["params"]
  last_block = _count(single["backbone"]["stage2"]["block4"])
  assert _count(dual) == _count(single) + last_block + _count(single["head"]) == 538_788
  assert set(dual["trunk"]["stage2"]) == {f"block{i}" for i in range(4)}
  assert set(dual["branch_c"]["backbone"]["stage2"]) == {"block4"}


def test_split_specs_recomposes_the_backbone():
  specs = resnet_cifar.cifar_stage_specs(32)
  trunk, branch = dual_branch.split_specs(specs, "block")
  assert sum(s.num_blocks for s in trunk + branch) == 15
  assert branch == (resnet_cifar.StageSpec(64, 1, 1, first_block=4),)
  assert dual_branch.split_specs(specs, "stage") == (specs[:2], specs[2:])


def test_small_model_counts():
  cnn = _abstract_init(models.small_cnn(K), jnp.zeros((1, 8, 8, 1)))["params"]
  assert _count(cnn) == (9 * 16 + 32) + (9 * 16 * 32 + 64) + (32 * K + K) == 5_178
  net = _abstract_init(models.mlp(3), jnp.zeros((1, 2)))["params"]
  assert _count(net) == (2 * 64 + 64) + (64 * 64 + 64) + (64 * 3 + 3)


# --------------------------------------------------------------------------- outputs


def test_resnet32_outputs_and_jit(resnet32_vars, cifar_x):
  model = models.resnet32(K)
  eager = model.apply(resnet32_vars, cifar_x, train=False)
  jitted = jax.jit(functools.partial(model.apply, train=False))(resnet32_vars, cifar_x)
  assert eager["logits"].shape == (2, K) and eager["features"].shape == (2, 64)
  assert eager["logits"].dtype == jnp.float32
  np.testing.assert_allclose(eager["logits"], jitted["logits"], rtol=1e-4, atol=1e-5)
  # features are the pooled representation the head sees.
  head = resnet32_vars["params"]["head"]["fc"]
  np.testing.assert_allclose(eager["features"] @ head["kernel"] + head["bias"],
                             eager["logits"], rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(eager["features"]) >= 0)   # after the final ReLU


@pytest.mark.parametrize("name,shape,kwargs", [
    ("small_cnn", (3, 8, 8, 1), {}), ("small_cnn", (3, 28, 28, 1), {"head": "normalized"}),
    ("mlp", (3, 2), {}), ("dual_small_cnn", (3, 8, 8, 1), {"layout": "block"})])
def test_small_model_outputs(name, shape, kwargs):
  model = models.get_model(name, 4, **kwargs)
  x = _images(shape)
  variables = _init(model, x)
  out = model.apply(variables, x, train=False)
  dim = 64 if name == "mlp" else 32
  assert out["logits"].shape == (3, 4) and out["features"].shape == (3, dim)
  if name == "dual_small_cnn":  # the branches' heads: test_dual_outputs_average_the_branches
    return
  # The logits are the head (numpy) applied to the returned features.
  z = np.asarray(out["features"], np.float64)
  head = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["head"])
  if kwargs.get("head") == "normalized":
    w = head["kernel"]
    want = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
  else:
    want = z @ head["fc"]["kernel"] + head["fc"]["bias"]
  np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)


def test_dual_outputs_average_the_branches(dual_vars, cifar_x):
  out = models.dual_resnet32(K).apply(dual_vars, cifar_x, train=False)
  for key in ("logits", "logits_c", "logits_r"):
    assert out[key].shape == (2, K)
  for key in ("features", "features_c", "features_r"):
    assert out[key].shape == (2, 64)
  np.testing.assert_allclose(out["logits"], (out["logits_c"] + out["logits_r"]) / 2, rtol=1e-6)
  np.testing.assert_array_equal(out["features"], out["features_c"])
  assert not np.allclose(out["logits_c"], out["logits_r"])   # independent branches


# ------------------------------------------------------------------------ batch norm


def test_batch_stats_update_in_training_only():
  model = models.small_cnn(K)
  x = _images((4, 8, 8, 1))
  variables = _init(model, x)
  _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
  _, same = model.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], variables["batch_stats"])
  # PyTorch momentum convention: running = 0.9 running + 0.1 batch (biased batch variance).
  kernel = variables["params"]["backbone"]["stage0"]["block0"]["conv"]["kernel"]
  y = np.asarray(jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")),
                 np.float64)
  stats = upd["batch_stats"]["backbone"]["stage0"]["block0"]["bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * y.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * y.var((0, 1, 2)), rtol=1e-4)


# ---------------------------------------------------------------------- dual routing


def test_dual_routes_halves(dual_vars, cifar_x):
  model = models.dual_resnet32(K)
  apply = functools.partial(model.apply, train=False)
  x_r1, x_r2 = _images((2, 32, 32, 3), seed=1), _images((2, 32, 32, 3), seed=2)
  out1 = apply(dual_vars, cifar_x, x_rebalance=x_r1)
  out2 = apply(dual_vars, cifar_x, x_rebalance=x_r2)
  np.testing.assert_allclose(out1["logits_c"], out2["logits_c"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out1["logits_r"], out2["logits_r"])
  # Branch c sees x, branch r sees x_rebalance: same as the inference pass on each input.
  only_x, only_r = apply(dual_vars, cifar_x), apply(dual_vars, x_r1)
  np.testing.assert_allclose(out1["logits_c"], only_x["logits_c"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out1["logits_r"], only_r["logits_r"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out1["features_r"], only_r["features_r"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out1["logits"], (out1["logits_c"] + out1["logits_r"]) / 2,
                             rtol=1e-6)
  np.testing.assert_array_equal(out1["features"], out1["features_c"])


def test_dual_training_batch_norm_covers_both_halves(dual_vars, cifar_x):
  model = models.dual_resnet32(K)
  _, upd = model.apply(dual_vars, cifar_x, train=True, x_rebalance=cifar_x[::-1] + 1.0,
                       mutable=["batch_stats"])
  for part in ("trunk", "branch_c", "branch_r"):
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), upd["batch_stats"][part],
                           dual_vars["batch_stats"][part])
    assert all(jax.tree.leaves(changed)), part


# --------------------------------------------------------------------------- Forward


def test_forward_wrapper_threads_batch_stats(dual_vars, cifar_x):
  model = models.dual_resnet32(K)
  fwd = recipe.Forward(model.apply, dual_vars["params"], dual_vars["batch_stats"])
  x_r = _images((2, 32, 32, 3), seed=3)
  outputs, fwd2 = fwd(cifar_x, x_rebalance=x_r)
  want, updates = model.apply(dual_vars, cifar_x, train=True, x_rebalance=x_r,
                              mutable=["batch_stats"])
  assert fwd2.params is fwd.params
  for key in ("logits_c", "logits_r"):
    np.testing.assert_allclose(outputs[key], want[key], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               fwd2.batch_stats, updates["batch_stats"])
  evaluate = recipe.Forward(model.apply, dual_vars["params"], dual_vars["batch_stats"],
                            train=False)
  eval_out, same = evaluate(cifar_x)
  assert same is evaluate
  np.testing.assert_allclose(eval_out["logits"],
                             model.apply(dual_vars, cifar_x, train=False)["logits"], rtol=1e-5)


def test_forward_wrapper_without_batch_stats():
  model = models.mlp(3)
  x = _images((4, 2))
  variables = _init(model, x)
  assert "batch_stats" not in variables
  outputs, fwd = recipe.Forward(model.apply, variables["params"], {})(x)
  np.testing.assert_allclose(outputs["logits"], model.apply(variables, x, train=True)["logits"],
                             rtol=1e-6)
  assert fwd.batch_stats == {}


# ---------------------------------------------------------------------------- inits


@pytest.mark.parametrize("block,fan", [
    (resnet_cifar.BasicBlock, "in"), (resnet_imagenet.block_def("basic"), "out")])
def test_real_init_conv_is_he_normal(block, fan):
  x = jnp.zeros((1, 4, 4, 64))
  kernel = jax.jit(functools.partial(block(features=128).init, train=False))(
      _fast_key(), x)["params"]["conv1"]["kernel"]
  fan_size = 9 * (64 if fan == "in" else 128)
  assert kernel.shape == (3, 3, 64, 128)
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / fan_size), rtol=0.03)
  assert np.abs(kernel).max() > 3 * np.sqrt(2 / fan_size)   # untruncated normal


def test_real_init_small_cnn_matches_structure():
  model = models.small_cnn(K)
  x = jnp.zeros((2, 8, 8, 1))
  variables = jax.jit(functools.partial(model.init, train=False))(_fast_key(), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, _abstract_init(model, x))
  bn = variables["batch_stats"]["backbone"]["stage0"]["block0"]["bn"]
  np.testing.assert_array_equal(bn["mean"], 0)
  np.testing.assert_array_equal(bn["var"], 1)
  np.testing.assert_array_equal(variables["params"]["head"]["fc"]["bias"], 0)
  assert np.all(np.isfinite(np.asarray(model.apply(variables, x, train=False)["logits"])))


# --------------------------------------------------------------------------- registry


def test_registry_names_and_dual_flag():
  assert set(models.MODELS) == {"resnet32", "resnet10", "resnet18", "resnet50",
                                "resnet152", "resnet18_cifar", "small_cnn",
                                "mlp", "dual_resnet32", "dual_small_cnn", "ride_resnet32",
                                "ride_small_cnn", "ride_resnet10", "ride_resnet50", "envnet",
                                "envnetv2"}
  assert isinstance(models.get_model("resnet32", K), models.ResNetCifar)
  assert models.get_model("dual_resnet32", K, layout="block").layout == "block"
  assert models.is_dual_branch(models.get_model("dual_small_cnn", K))
  assert not models.is_dual_branch(models.get_model("small_cnn", K))
  assert models.get_model("resnet50", K, head="normalized").head == "normalized"


def test_errors():
  with pytest.raises(ValueError, match="valid models: dual_resnet32, dual_small_cnn, envnet, envnetv2, mlp"):
    models.get_model("resnet34", K)
  with pytest.raises(ValueError, match="Unknown head"):
    models.get_model("resnet32", K, head="cos")
  with pytest.raises(ValueError, match="num_classes"):
    models.get_model("mlp", 0)
  with pytest.raises(ValueError, match="layout"):
    models.get_model("dual_resnet32", K, layout="branch")
  with pytest.raises(ValueError, match="at least two widths"):
    models.dual_small_cnn(K, widths=(16,))
  with pytest.raises(ValueError, match="6n \\+ 2"):
    resnet_cifar.cifar_stage_specs(30)
  with pytest.raises(ValueError, match="Unknown block"):
    resnet_imagenet.block_def("wide")
  with pytest.raises(ValueError, match="x must have shape"):
    _abstract_init(models.resnet32(K), jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="x_rebalance must have the shape"):
    jax.eval_shape(functools.partial(models.dual_small_cnn(K).init, train=False,
                                     x_rebalance=jnp.zeros((3, 8, 8, 1))),
                   jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="stage_sizes"):
    _abstract_init(resnet_imagenet.ResNetImageNet(K, stage_sizes=(1, 1)),
                   jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="hidden"):
    _abstract_init(small.MLP(K, hidden=(0,)), jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match="Unknown shortcut"):
    _abstract_init(resnet_cifar.BasicBlock(8, strides=2, shortcut="C"),
                   jnp.zeros((1, 4, 4, 4)))
