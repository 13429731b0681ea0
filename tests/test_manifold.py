"""Manifold mixup (Verma et al. 2019): the model's mixing hook and the recipe.

References are direct computations: the network applied to lam x_a + (1 - lam) x_b (layer
0), and the network's stages run one by one with the hidden state mixed by hand (deeper
layers); the layer draw is checked for uniformity with a chi-square test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ltjax import recipe, samplers
from ltjax import methods
from ltjax.methods import manifold
from ltjax.models import registry as model_registry
from ltjax.models import resnet_cifar, small

K = 4
LAM = 0.3


def init(model, x, seed=0):
  """Variables with perturbed running statistics (so inference BN is not the identity)."""
  variables = model.init(jax.random.key(seed), x, train=False)
  rng = np.random.default_rng(seed)
  stats_ = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.2, 0.8, a.shape), a.dtype),
                        variables["batch_stats"])
  return {"params": variables["params"], "batch_stats": stats_}


def batch(n=6, size=16, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, 3)), jnp.float32)


def sub(variables, *path):
  out = {}
  for collection, tree in variables.items():
    for key in path:
      tree = tree.get(key, {}) if isinstance(tree, dict) else {}
    out[collection] = tree
  return {c: t for c, t in out.items() if t}


def head(variables, feature_map):
  fc = variables["params"]["head"]["fc"]
  return feature_map.mean(axis=(1, 2)) @ fc["kernel"] + fc["bias"]


def resnet32_by_hand(variables, x, layer, mix):
  """ResNet-32 (inference) stage by stage, `mix` applied after mixing layer `layer`."""
  specs = resnet_cifar.cifar_stage_specs(32)
  h = mix(x) if layer == 0 else x
  h = resnet_cifar.CifarStem(16).apply(sub(variables, "backbone", "stem"), h, False)
  for s, spec in enumerate(specs):
    h = resnet_cifar.Stage(spec, resnet_cifar.BasicBlock).apply(
        sub(variables, "backbone", f"stage{s}"), h, False)
    h = mix(h) if layer == s + 1 else h
  return head(variables, h)


def small_cnn_by_hand(variables, x, layer, mix, widths):
  h = mix(x) if layer == 0 else x
  for s, spec in enumerate(small.small_cnn_specs(widths)):
    h = resnet_cifar.Stage(spec, small.ConvBNReLU).apply(
        sub(variables, "backbone", f"stage{s}"), h, False)
    h = mix(h) if layer == s + 1 else h
  return head(variables, h)


def mixer(perm, lam=LAM):
  return lambda h: lam * h + (1 - lam) * h[perm]


PERM = np.array([3, 0, 5, 1, 2, 4])


@pytest.mark.parametrize("name", ["resnet32", "small_cnn"])
@pytest.mark.parametrize("train", [False, True])
def test_layer_zero_is_input_mixup(name, train):
  model = model_registry.get_model(name, K)
  x = batch()
  variables = init(model, x)
  mixed_input = LAM * x + (1 - LAM) * x[PERM]
  kwargs = {"mutable": ["batch_stats"]} if train else {}
  expected = model.apply(variables, mixed_input, train=train, **kwargs)
  for index in (0, jnp.int32(0)):  # a concrete and a traced-style index
    got = model.apply(variables, x, train=train, mix=(index, mixer(PERM)), **kwargs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 got, expected)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_resnet32_deeper_layer_mixes_the_stage_output(layer):
  model = model_registry.get_model("resnet32", K)
  x = batch()
  variables = init(model, x)
  expected = resnet32_by_hand(variables, x, layer, mixer(PERM))
  got = jax.jit(lambda i: model.apply(variables, x, train=False, mix=(i, mixer(PERM))))(
      jnp.int32(layer))["logits"]
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  unmixed = resnet32_by_hand(variables, x, -1, mixer(PERM))
  assert not np.allclose(got, unmixed, atol=1e-3)  # the mix did change the output


@pytest.mark.parametrize("layer", [1, 2])
def test_small_cnn_deeper_layer_mixes_the_stage_output(layer):
  model = model_registry.get_model("small_cnn", K)
  x = batch(size=8)
  variables = init(model, x)
  got = model.apply(variables, x, train=False, mix=(layer, mixer(PERM)))["logits"]
  np.testing.assert_allclose(got, small_cnn_by_hand(variables, x, layer, mixer(PERM),
                                                    (16, 32)), rtol=1e-4, atol=1e-5)


def test_mixing_layer_outside_the_network_is_refused():
  model = model_registry.get_model("small_cnn", K)
  x = batch(size=8)
  variables = init(model, x)
  with pytest.raises(ValueError, match=r"Mixing layer must be in 0..2"):
    model.apply(variables, x, train=False, mix=(3, mixer(PERM)))


@pytest.mark.parametrize("layers", [(0, 1, 2), (0, 2, 3)])
def test_layer_draw_is_uniform(layers):
  keys = jax.random.split(jax.random.key(0), 3000)
  drawn = np.asarray(jax.vmap(lambda k: manifold.draw_layer(k, layers))(keys))
  assert set(drawn.tolist()) == set(layers)
  observed = np.array([(drawn == k).sum() for k in layers])
  assert stats.chisquare(observed).pvalue > 1e-3


def test_recipe_validation():
  with pytest.raises(ValueError, match="distinct non-negative"):
    manifold.ManifoldMixup(layers=(0, 0))
  with pytest.raises(ValueError, match="distinct non-negative"):
    manifold.ManifoldMixup(layers=())
  with pytest.raises(ValueError, match="alpha"):
    manifold.ManifoldMixup(alpha=-1.0)


def np_sides_ce(logits, labels_a, labels_b, lam):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  rows = np.arange(len(labels_a))
  return float((-lam * logp[rows, labels_a] - (1 - lam) * logp[rows, labels_b]).mean())


def test_recipe_loss_replays_as_mixup_of_hidden_states_with_vanilla_labels():
  """The loss of a step equals the hand-run network mixed at the drawn layer, with the drawn
  partner and lambda, and the cross-entropy of the vanilla mixed label."""
  widths = (16, 32)
  model = model_registry.get_model("small_cnn", K)
  n, b = 20, 8
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(n, dtype=np.int32) % K
  data = recipe.DeviceDataset(jnp.asarray(images), jnp.asarray(labels),
                              samplers.build_class_index(labels, K))
  variables = init(model, jnp.zeros((1, 8, 8, 3)))
  forward = recipe.Forward(model.apply, variables["params"], variables["batch_stats"], False)
  clean = np.arange(b) * 3 % n
  rcp = methods.get_recipe("manifold_mixup", num_epochs=10)
  assert (rcp.alpha, rcp.layers) == (1.0, (0, 1, 2))

  @jax.jit
  def step(key):
    ctx = recipe.StepContext(
        key=key, step=jnp.int32(0), epoch=jnp.int32(0), num_epochs=10, batch_size=b,
        clean_indices=jnp.asarray(clean, jnp.int32), data=data,
        load=lambda _, idx: (data.images[idx].astype(jnp.float32) / 255.0, data.labels[idx]))
    loss, out = rcp.loss(forward, ctx, ())
    return loss, out.draws

  seen = set()
  for seed in range(8):
    loss, draws = step(jax.random.key(seed))
    layer, lam = int(draws["layer"]), float(draws["lam"])
    partner = np.asarray(draws["partner"])
    x = jnp.asarray(images[clean], jnp.float32) / 255.0
    logits = small_cnn_by_hand(variables, x, layer, mixer(partner, lam), widths)
    y = labels[clean]
    np.testing.assert_allclose(float(loss), np_sides_ce(logits, y, y[partner], lam),
                               rtol=1e-4)
    seen.add(layer)
  assert len(seen) >= 2
