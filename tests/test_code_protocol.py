"""The authors'-code training options ("code protocol"), checked against the code's semantics.

Each expectation comes from the reference repositories' behaviour or from first principles
(numpy convolutions and BatchNorm running averages, a PyTorch mirror of the reference
ResNet), never from ltjax's own output:

- DBN-Mix (soony1213/DBN-Mix): separate trunk passes, per-iteration warm-up from lr 0,
  `drop_last=False`, reflect padding;
- OTmix / CMO (JintongGao/Enhancing-Minority-Classes-by-Mixing, naver-ai/cmo): training-mode
  OT feature passes (background, then foreground), the un-pooled feature map without the
  stem ReLU, the 0-based OT gate, the mixing window;
- imbalanced-DL (ntucllab/imbalanced-DL) and SBN-Mix: the extra clean training-mode pass.

BatchNorm running statistics: flax and PyTorch both update `r <- 0.9 r + 0.1 batch`, so a
sequence of training-mode passes with batch means m_1, ..., m_n from r_0 = 0 ends at
sum_i 0.1 * 0.9^(n - i) m_i.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import augment, methods, recipe, samplers, training
from ltjax.models import get_model
from ltjax.models.resnet_cifar import ResNetCifar
from ltjax.training import loop, schedules

torch = pytest.importorskip(
    "torch", reason="the PyTorch transcriptions need PyTorch: pip install -e '.[parity]'")

K = 4
COUNTS = np.array([20, 12, 6, 4])
N = int(COUNTS.sum())
LABELS = np.repeat(np.arange(K), COUNTS).astype(np.int32)
IMAGES = np.random.default_rng(0).integers(1, 256, (N, 8, 8, 1)).astype(np.uint8)
WIDTHS = (4, 8)


def make_data() -> recipe.DeviceDataset:
  return recipe.DeviceDataset.from_arrays(IMAGES, LABELS, K)


def to_float(images: np.ndarray) -> np.ndarray:
  return np.asarray(images, np.float64) / 255.0


def load(data: recipe.DeviceDataset):
  """Identity augmentation, x / 255: a batch can be rebuilt from its indices."""
  return lambda key, idx: (data.images[idx].astype(jnp.float32) / 255.0, data.labels[idx])


def make_ctx(key, clean, epoch=5, num_epochs=10) -> recipe.StepContext:
  data = make_data()
  clean = jnp.asarray(clean, jnp.int32)
  return recipe.StepContext(key=key, step=jnp.int32(0), epoch=jnp.int32(epoch),
                            num_epochs=num_epochs, batch_size=clean.shape[0],
                            clean_indices=clean, data=data, load=load(data))


def conv_stats(x: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and biased variance of a 3x3, stride-1, zero-padded, bias-free
  cross-correlation (the first convolution in front of the first BatchNorm)."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  y = sum(padded[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
          for dy in range(3) for dx in range(3))
  return y.mean((0, 1, 2)), y.var((0, 1, 2))


def running(batches: list[np.ndarray], kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Running (mean, var) after training-mode passes over `batches`, in order, from (0, 1)."""
  mean, var = 0.0, 1.0
  for x in batches:
    m, v = conv_stats(x, kernel)
    mean, var = 0.9 * mean + 0.1 * m, 0.9 * var + 0.1 * v
  return mean, var


def init(model, shape=(1, 8, 8, 1)):
  variables = model.init(jax.random.key(0), jnp.zeros(shape), train=False)
  return variables["params"], variables["batch_stats"]


def assert_running(batch_stats, path, batches, kernel):
  mean, var = running(batches, kernel)
  bn = batch_stats
  for name in path:
    bn = bn[name]
  np.testing.assert_allclose(np.asarray(bn["mean"]), mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(bn["var"]), var, rtol=1e-4, atol=1e-6)


class Recording:
  """Wraps a model's apply and records (x, train, keyword arguments) of every call."""

  def __init__(self, apply_fn):
    self.apply_fn = apply_fn
    self.calls = []

  def __call__(self, variables, x, train, **kwargs):
    self.calls.append((x, train, {k: v for k, v in kwargs.items() if k != "mutable"}))
    return self.apply_fn(variables, x, train=train, **kwargs)


def run_loss(recipe_, model, ctx, state=(), apply_fn=None):
  """recipe.loss under jit with a real model: (loss, batch_stats after, draws)."""
  params, batch_stats = init(model)
  apply_fn = apply_fn or model.apply

  @jax.jit
  def go(params, batch_stats):
    loss, out = recipe_.loss(recipe.Forward(apply_fn, params, batch_stats), ctx, state)
    return loss, out.forward.batch_stats, out.draws

  return params, go(params, batch_stats)


# ---------------------------------------------------------------- DBN-Mix: separate trunk

def test_separate_trunk_normalises_each_batch_and_updates_twice():
  """DBN-Mix code: model(x_c, classifier_cb=True) then model(x_r, classifier_rb=True)."""
  model = get_model("dual_small_cnn", K, widths=WIDTHS)
  params, batch_stats = init(model)
  kernel = np.asarray(params["trunk"]["stage0"]["block0"]["conv"]["kernel"])
  x_c, x_r, x_r2 = (to_float(IMAGES[i:i + 6]) for i in (0, 10, 30))
  variables = {"params": params, "batch_stats": batch_stats}

  def apply(x_rebalance, trunk):
    return model.apply(variables, jnp.asarray(x_c, jnp.float32), train=True,
                       x_rebalance=jnp.asarray(x_rebalance, jnp.float32), trunk=trunk,
                       mutable=["batch_stats"])

  out, updates = apply(x_r, "separate")
  path = ("trunk", "stage0", "block0", "bn")
  assert_running(updates["batch_stats"], path, [x_c, x_r], kernel)  # x_c's batch first
  out2, _ = apply(x_r2, "separate")
  np.testing.assert_array_equal(out["logits_c"], out2["logits_c"])  # own batch statistics
  assert not np.allclose(out["logits_r"], out2["logits_r"])
  joint, joint_updates = apply(x_r, "joint")
  assert_running(joint_updates["batch_stats"], path, [np.concatenate([x_c, x_r])], kernel)
  assert not np.allclose(joint["logits_c"], apply(x_r2, "joint")[0]["logits_c"])
  with pytest.raises(ValueError, match="trunk"):
    apply(x_r, "twice")


def test_dbn_mix_trunk_option_reaches_the_model():
  model = get_model("dual_small_cnn", K, widths=WIDTHS)
  ctx = make_ctx(jax.random.key(0), np.arange(6) * 7 % N)
  kwargs = {}
  for trunk in ("joint", "separate"):
    rec = Recording(model.apply)
    run_loss(methods.DBNMix(trunk=trunk), model, ctx, apply_fn=rec)
    [(_, train, kwargs[trunk])] = rec.calls
    assert train
  assert set(kwargs["joint"]) == {"x_rebalance"}  # the default call is unchanged
  assert kwargs["separate"]["trunk"] == "separate"
  with pytest.raises(ValueError, match="trunk"):
    methods.DBNMix(trunk="shared")


# ---------------------------------------------------------------- warm-up per iteration

def dbn_code_lr(step, base, warmup_epoch, spe, milestones, gamma):
  """DBN-Mix main.py `warmup_step_schedule` (LambdaLR, stepped after every optimiser step,
  so optimiser step t uses lr_lambda(t))."""
  if step < warmup_epoch * spe:
    return base * step / max(1.0, warmup_epoch * spe)
  if step < milestones[0] * spe:
    return base
  if step < milestones[1] * spe:
    return base * gamma
  return base * gamma ** 2


def test_step_warmup_matches_dbn_mix_code():
  spe = loop.steps_per_epoch(12406, 128, drop_last=False)
  assert spe == 97  # CIFAR-10-LT-100 with the last partial batch
  sched = jax.jit(schedules.warmup_multistep(0.1, spe, 5, (160, 180), gamma=0.1,
                                             warmup_unit="step"))
  steps = np.r_[0:3, 96:99, 480:490, 160 * spe - 2:160 * spe + 2, 180 * spe - 1:180 * spe + 1,
                200 * spe - 1]
  got = np.asarray([sched(t) for t in steps])
  expected = [dbn_code_lr(t, 0.1, 5, spe, (160, 180), 0.1) for t in steps]
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
  assert got[0] == 0.0
  epoch_unit = schedules.warmup_multistep(0.1, spe, 5, (160, 180))
  assert float(epoch_unit(0)) == pytest.approx(0.02)  # the default stays per epoch


def test_step_warmup_then_cosine():
  base, spe, warm, total = 0.1, 7, 2, 10
  sched = schedules.warmup_cosine(base, spe, warm, total, warmup_unit="step")
  for t in (0, 5, 13, 14, 40, 69):
    if t < warm * spe:
      expected = base * t / (warm * spe)
    else:
      expected = base * 0.5 * (1 + math.cos(math.pi * (t - warm * spe) / ((total - warm) * spe)))
    assert float(sched(t)) == pytest.approx(expected, rel=1e-5, abs=1e-7)
  with pytest.raises(ValueError, match="warmup_unit"):
    schedules.warmup_multistep(0.1, spe, 5, (8,), warmup_unit="iteration")


# ---------------------------------------------------------------- drop_last=False

def test_steps_per_epoch_and_epoch_batches():
  assert loop.steps_per_epoch(12406, 128) == 96
  assert loop.steps_per_epoch(12406, 128, drop_last=False) == 97
  assert loop.steps_per_epoch(256, 128, drop_last=False) == 2
  key = jax.random.key(7)
  grid, last = loop.epoch_batches(key, 45, 8, drop_last=False)
  perm = np.asarray(jax.random.permutation(key, 45))  # documented: its rows, then the rest
  np.testing.assert_array_equal(grid, perm[:40].reshape(5, 8))
  np.testing.assert_array_equal(last, perm[40:])
  assert loop.epoch_batches(key, 45, 8)[1] is None
  assert loop.epoch_batches(key, 48, 8, drop_last=False)[1] is None


@dataclasses.dataclass(frozen=True)
class CountingERM(recipe.Recipe):
  """Cross-entropy on the clean batch; counts every trained index in its state and logs
  the step's batch sizes (clean, ctx.batch_size, a default-size draw)."""
  name: str = "counting_erm"

  def init_state(self, class_counts):
    return jnp.zeros((N,), jnp.int32)

  def loss(self, forward, ctx, method_state):
    x, y, idx = ctx.clean_batch(ctx.keys("clean")["clean"])
    drawn = ctx.draw(ctx.keys("clean", "draw")["draw"], samplers.Law("class_balanced"))
    outputs, forward = forward(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], y).mean()
    sizes = {"clean": jnp.float32(idx.shape[0]), "ctx": jnp.float32(ctx.batch_size),
             "drawn": jnp.float32(drawn.indices.shape[0])}
    return loss, recipe.LossOutput(forward, method_state.at[idx].add(1), sizes)


def epoch_run(loop_name, drop_last, batch=8):
  model = get_model("small_cnn", K, widths=WIDTHS)
  tx = training.sgd(0.05, momentum=0.9)
  data = make_data()
  state = training.create_state(model, CountingERM(), tx, jnp.zeros((1, 8, 8, 1)),
                                training.run_keys(0).init, data.class_counts)
  epoch = loop.make_train_epoch(CountingERM(), model.apply, tx, data, batch_size=batch,
                                num_epochs=2, augment_fn=None,
                                normalize_fn=lambda im: im.astype(jnp.float32) / 255.0,
                                seed=0, loop=loop_name, drop_last=drop_last)
  state, metrics = epoch(state, 0)
  return epoch, state, jax.device_get(metrics)


@pytest.mark.parametrize("loop_name", ["scan", "steps"])
def test_drop_last_false_trains_every_sample_once(loop_name):
  epoch, state, metrics = epoch_run(loop_name, drop_last=False)  # N = 42, B = 8
  assert epoch.steps_per_epoch == 6 and int(state.step) == 6
  np.testing.assert_array_equal(np.asarray(state.method_state), 1)
  for name in ("clean", "ctx", "drawn"):
    np.testing.assert_array_equal(metrics[name], [8, 8, 8, 8, 8, 2])
  _, dropped, metrics = epoch_run(loop_name, drop_last=True)
  assert int(dropped.step) == 5 and int(np.asarray(dropped.method_state).sum()) == 40
  np.testing.assert_array_equal(metrics["clean"], 8)


def test_drop_last_false_scan_equals_steps_and_fit_counts_steps():
  _, scan_state, scan_metrics = epoch_run("scan", drop_last=False)
  _, step_state, step_metrics = epoch_run("steps", drop_last=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=2e-5, atol=1e-6),
               (scan_state.params, scan_state.batch_stats), (step_state.params,
                                                             step_state.batch_stats))
  np.testing.assert_allclose(scan_metrics["loss"], step_metrics["loss"], rtol=2e-5)
  model = get_model("small_cnn", K, widths=WIDTHS)
  phase = training.Phase(CountingERM(), 2, training.sgd(0.05))
  result = training.fit(model, [phase], make_data(), batch_size=8, seed=0,
                        normalize_fn=lambda im: im.astype(jnp.float32) / 255.0,
                        progress=False, loop="steps", drop_last=False)
  assert int(result.state.step) == 12


@pytest.mark.parametrize("recipe_, draw", [
    (methods.DBNMix(), "indices_v"), (methods.SBNMix(), "indices_v"),
    (methods.OTmix(ot=False), "indices_fore"), (methods.OTmix(), "indices_fore")])
def test_second_batch_takes_the_size_of_the_last_batch(recipe_, draw):
  """DBN-Mix code: one re-balancing sample per clean sample (`__getitem__`); CMO / OTmix
  code: `input2 = input2[:input.size()[0]]`."""
  name = "dual_small_cnn" if recipe_.branches == 2 else "small_cnn"
  model = get_model(name, K, widths=WIDTHS)
  tx = training.sgd(0.05)
  data = make_data()
  state = training.create_state(model, recipe_, tx, jnp.zeros((1, 8, 8, 1)),
                                training.run_keys(0).init, data.class_counts)
  step = jax.jit(loop.make_train_step(recipe_, model.apply, tx, batch_size=2, num_epochs=10,
                                      augment_fn=None,
                                      normalize_fn=lambda im: im.astype(jnp.float32) / 255.,
                                      seed=0))
  _, _, draws = step(state, data, jnp.int32(5), jnp.asarray([3, 17], jnp.int32))
  assert draws[draw].shape == (2,)
  with pytest.raises(ValueError, match="batches of 2"):
    step(state, data, jnp.int32(5), jnp.arange(3, dtype=jnp.int32))


# ---------------------------------------------------------------- padding mode

def test_reflect_padding_matches_torch():
  """torchvision RandomCrop(padding_mode='reflect') pads with torch's 'reflect' mode."""
  images = np.random.default_rng(1).integers(0, 256, (64, 6, 5, 2)).astype(np.uint8)
  out = np.asarray(augment.random_crop_flip(jax.random.key(3), images, pad=2, flip=False,
                                            pad_mode="reflect"))
  padded = torch.nn.functional.pad(torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2),
                                   (2, 2, 2, 2), mode="reflect").permute(0, 2, 3, 1).numpy()
  offsets = set()
  for b in range(len(images)):
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(padded[b, dy:dy + 6, dx:dx + 5], out[b])]
    assert hits, f"image {b} is no window of the reflect-padded image"
    offsets.add(hits[0])
  assert len(offsets) > 10
  zero = np.asarray(augment.preprocess(jax.random.key(3), images, 0.0, 1.0, pad=2, flip=False))
  refl = np.asarray(augment.preprocess(jax.random.key(3), images, 0.0, 1.0, pad=2, flip=False,
                                       pad_mode="reflect"))
  np.testing.assert_allclose(refl * 255, out, atol=1e-3)
  assert not np.allclose(zero, refl)
  with pytest.raises(ValueError, match="pad_mode"):
    augment.random_crop_flip(jax.random.key(0), images, pad_mode="wrap")


# ---------------------------------------------------------------- models: feature map

@pytest.mark.parametrize("name, shape", [("small_cnn", (2, 8, 8, 1)),
                                         ("resnet32", (2, 16, 16, 3)),
                                         ("resnet10", (2, 32, 32, 3))])
def test_feature_map_is_the_unpooled_last_stage(name, shape):
  model = get_model(name, K)
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  for stem_relu in (True, False):
    out = model.apply(variables, x, train=False, stem_relu=stem_relu)
    fmap = np.asarray(out["feature_map"])
    assert fmap.ndim == 4 and fmap.shape[0] == 2
    np.testing.assert_allclose(fmap.mean((1, 2)), out["features"], rtol=1e-5, atol=1e-6)


class TorchBlock(torch.nn.Module):
  """The reference CIFAR BasicBlock (option-A shortcut), written from its description."""

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(planes)
    self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(planes)
    self.option_a = stride != 1 or cin != planes
    self.planes = planes

  def forward(self, x):
    out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    p = self.planes // 4
    shortcut = (torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
                if self.option_a else x)
    return torch.relu(out + shortcut)


class TorchResNet(torch.nn.Module):
  """ResNet_s of the OTmix repository (children: conv1, bn1, layer1-3, linear; the stem
  ReLU and the pooling are functional), one block per stage."""

  def __init__(self, widths):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(widths[0])
    self.layer1 = torch.nn.Sequential(TorchBlock(widths[0], widths[0], 1))
    self.layer2 = torch.nn.Sequential(TorchBlock(widths[0], widths[1], 2))
    self.layer3 = torch.nn.Sequential(TorchBlock(widths[1], widths[2], 2))
    self.linear = torch.nn.Linear(widths[2], K)

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    return self.layer3(self.layer2(self.layer1(out)))


def load_torch(net: TorchResNet, params) -> None:
  conv = lambda k: torch.tensor(np.asarray(k)).permute(3, 2, 0, 1)
  p = params["backbone"]
  with torch.no_grad():
    def bn(module, flax_bn):
      module.weight.copy_(torch.tensor(np.asarray(flax_bn["scale"])))
      module.bias.copy_(torch.tensor(np.asarray(flax_bn["bias"])))
    net.conv1.weight.copy_(conv(p["stem"]["conv"]["kernel"]))
    bn(net.bn1, p["stem"]["bn"])
    for s, layer in enumerate((net.layer1, net.layer2, net.layer3)):
      block = p[f"stage{s}"]["block0"]
      layer[0].conv1.weight.copy_(conv(block["conv1"]["kernel"]))
      layer[0].conv2.weight.copy_(conv(block["conv2"]["kernel"]))
      bn(layer[0].bn1, block["bn1"])
      bn(layer[0].bn2, block["bn2"])


def test_stem_relu_false_is_the_otmix_cifar_feature_extractor():
  """final_otmix/cifar_train.py: model_f = nn.Sequential(*list(model.children())[:-1]),
  run in training mode."""
  widths = (2, 4, 8)
  model = ResNetCifar(K, depth=8, widths=widths)
  x = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(x), train=False)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(9), a.shape),
                        variables["params"])
  net = TorchResNet(widths)
  load_torch(net, params)
  net.train()
  xt = torch.tensor(x).permute(0, 3, 1, 2)
  model_f = torch.nn.Sequential(*list(net.children())[:-1])
  expected = model_f(xt).detach().permute(0, 2, 3, 1).numpy()
  out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             jnp.asarray(x), train=True, stem_relu=False,
                             mutable=["batch_stats"])
  np.testing.assert_allclose(out["feature_map"], expected, rtol=1e-4, atol=1e-5)
  flax_means = updates["batch_stats"]["backbone"]
  torch_means = {"stem": net.bn1, "stage2": net.layer3[0].bn2}
  np.testing.assert_allclose(flax_means["stem"]["bn"]["mean"],
                             torch_means["stem"].running_mean.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(flax_means["stage2"]["block0"]["bn2"]["mean"],
                             torch_means["stage2"].running_mean.numpy(), rtol=1e-4, atol=1e-6)
  forward = net(xt).detach().permute(0, 2, 3, 1).numpy()  # the model's own forward
  with_relu = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                          jnp.asarray(x), train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(with_relu["feature_map"], forward, rtol=1e-4, atol=1e-5)
  assert not np.allclose(expected, forward)


# ---------------------------------------------------------------- OTmix / CMO

def otmix_ctx(mix=True):
  clean = np.arange(6) * 5 % N
  return make_ctx(jax.random.key(11), clean), {
      "confusion": jnp.asarray((1 - np.eye(K)) / (K - 1), jnp.float32),
      "draw": jnp.float32(0.0)}  # draw 0: every epoch pairs by OT


def mixed_batch(draws) -> np.ndarray:
  back = to_float(IMAGES[np.asarray(draws["indices_back"])])[np.asarray(draws["partner"])]
  fore = to_float(IMAGES[np.asarray(draws["indices_fore"])])
  y0, y1, x0, x1 = np.asarray(draws["box"])
  back[:, y0:y1, x0:x1] = fore[:, y0:y1, x0:x1]
  return back


@pytest.mark.parametrize("features", ["inference", "train", "train_unpooled"])
@pytest.mark.parametrize("mix_prob", [1.0, 0.0])
def test_otmix_feature_passes_update_batch_stats_in_code_order(features, mix_prob):
  """Code: f = model_f(input) (background), f2 = model_f(input2) (foreground), then
  model(input3) (mixed), all in training mode; without mixing, only model(input)."""
  model = get_model("small_cnn", K, widths=WIDTHS)
  ctx, state = otmix_ctx()
  recipe_ = methods.OTmix(ot_features=features, mix_prob=mix_prob)
  params, (_, batch_stats, draws) = run_loss(recipe_, model, ctx, state)
  kernel = np.asarray(params["backbone"]["stage0"]["block0"]["conv"]["kernel"])
  back = to_float(IMAGES[np.asarray(draws["indices_back"])])
  fore = to_float(IMAGES[np.asarray(draws["indices_fore"])])
  if not mix_prob:
    assert not bool(draws["mixed"])
    batches = [back]
  elif features == "inference":
    batches = [mixed_batch(draws)]
  else:
    batches = [back, fore, mixed_batch(draws)]
  assert_running(batch_stats, ("backbone", "stage0", "block0", "bn"), batches, kernel)


def test_otmix_feature_passes_call_the_model_as_the_code():
  model = get_model("small_cnn", K, widths=WIDTHS)
  ctx, state = otmix_ctx()
  for features, kwargs in (("train", {}), ("train_unpooled", {"stem_relu": False})):
    rec = Recording(model.apply)
    _, (_, _, draws) = run_loss(methods.OTmix(ot_features=features), model, ctx, state, rec)
    assert [c[1] for c in rec.calls] == [True, True, True]
    assert [c[2] for c in rec.calls] == [kwargs, kwargs, {}]
    shapes = [c[0].shape for c in rec.calls]
    assert shapes == [(6, 8, 8, 1)] * 3
  with pytest.raises(ValueError, match="ot_features"):
    methods.OTmix(ot_features="pooled")


def test_mix_window_is_the_code_condition():
  """Code: `args.start_data_aug < epoch < (args.epochs - args.end_data_aug)` over
  `for epoch in range(args.start_epoch, args.epochs)` (0-based), start = end = 3."""
  recipe_ = methods.OTmix(ot=False, mix_window=(3, 3))
  epochs = 12
  gate = jax.jit(lambda e: recipe_.mix_gate(jax.random.key(0), make_ctx(
      jax.random.key(0), np.arange(4), e, epochs)))
  mixed = [e for e in range(epochs) if bool(gate(e))]
  assert mixed == [e for e in range(epochs) if 3 < e < epochs - 3]


# ---------------------------------------------------------------- clean training passes

def test_mixup_clean_pass_runs_first_and_only_moves_batch_stats():
  """imbalanced-DL: output_prec = model(_input); output_mix = model(_input_mix); the loss
  uses output_mix only."""
  model = get_model("small_cnn", K, widths=WIDTHS)
  ctx = make_ctx(jax.random.key(5), np.arange(8) * 3 % N)
  rec = Recording(model.apply)
  params, (loss, batch_stats, draws) = run_loss(methods.Mixup(clean_pass=True), model, ctx,
                                                apply_fn=rec)
  _, (loss_plain, _, draws_plain) = run_loss(methods.Mixup(), model, ctx)
  assert [c[1] for c in rec.calls] == [True, True]
  clean = to_float(IMAGES[np.asarray(draws["indices"])])
  lam = float(draws["lam"])
  mixed = lam * clean + (1 - lam) * clean[np.asarray(draws["partner"])]
  kernel = np.asarray(params["backbone"]["stage0"]["block0"]["conv"]["kernel"])
  assert_running(batch_stats, ("backbone", "stage0", "block0", "bn"), [clean, mixed], kernel)
  assert float(loss) == pytest.approx(float(loss_plain), rel=1e-6)  # not in the loss
  jax.tree.map(np.testing.assert_array_equal, draws, draws_plain)


def test_sbn_mix_clean_pass_follows_the_mixed_pass():
  """DBN-Mix main.py (SBN-Mix: mixup without experts): loss on model(mixed), then
  accuracy from model(input_ori) in training mode."""
  model = get_model("small_cnn", K, widths=WIDTHS)
  ctx = make_ctx(jax.random.key(6), np.arange(8) * 5 % N)
  params, (loss, batch_stats, draws) = run_loss(methods.SBNMix(clean_pass=True), model, ctx)
  _, (loss_plain, _, _) = run_loss(methods.SBNMix(), model, ctx)
  u = to_float(IMAGES[np.asarray(draws["indices_u"])])
  v = to_float(IMAGES[np.asarray(draws["indices_v"])])
  lam = float(draws["lam"])
  kernel = np.asarray(params["backbone"]["stage0"]["block0"]["conv"]["kernel"])
  assert_running(batch_stats, ("backbone", "stage0", "block0", "bn"),
                 [lam * u + (1 - lam) * v, u], kernel)
  assert float(loss) == pytest.approx(float(loss_plain), rel=1e-6)
