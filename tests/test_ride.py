"""RIDE (Wang et al. 2021): the multi-expert network and the distribution-aware diversity loss.

The references are transcriptions of frank-xwang/RIDE-LongTailRecognition: the network of
model/ldam_drw_resnets/ride_resnet_cifar.py (`ResNet_s`) in PyTorch, and `RIDELoss.forward`
of model/loss.py in float64 PyTorch (its LDAM margins, DRW weights, class temperatures and
`_hook_before_epoch` switch on the trainer's 1-based epoch). Weights and logits go from
ltjax to the references, never the other way round.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from ltjax import methods, mixing, models, recipe, samplers
from ltjax.methods import criteria, ride
from ltjax.models import ride as ride_models
from ltjax.training import optim, trainer

jax.config.update("jax_enable_x64", False)

# ------------------------------------------------------------ the reference network (torch)


class TorchBlock(tnn.Module):
  """ride_resnet_cifar.BasicBlock, option A: F.pad(x[:, :, ::2, ::2]) by (planes - in) // 2."""

  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    pad = (planes - in_planes) // 2
    self.shortcut = ((lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)))
                     if stride != 1 or in_planes != planes else (lambda x: x))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TorchNormedLinear(tnn.Module):
  def __init__(self, d, k):
    super().__init__()
    self.weight = tnn.Parameter(torch.empty(d, k))

  def forward(self, x):
    return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class TorchRIDE(tnn.Module):
  """`ResNet_s(BasicBlock, [5, 5, 5], num_experts, reduce_dimension, use_norm, s=30)`."""

  def __init__(self, num_classes, num_experts, reduce_dimension, use_norm):
    super().__init__()
    w2, w3 = (24, 48) if reduce_dimension else (32, 64)
    self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(16)
    layer = lambda cin, c, stride: tnn.Sequential(
        *[TorchBlock(cin if i == 0 else c, c, stride if i == 0 else 1) for i in range(5)])
    self.layer1 = layer(16, 16, 1)
    self.layer2s = tnn.ModuleList([layer(16, w2, 2) for _ in range(num_experts)])
    self.layer3s = tnn.ModuleList([layer(w2, w3, 2) for _ in range(num_experts)])
    self.linears = tnn.ModuleList([TorchNormedLinear(w3, num_classes) if use_norm
                                   else tnn.Linear(w3, num_classes)
                                   for _ in range(num_experts)])
    self.s = 30.0 if use_norm else 1.0

  def forward(self, x):
    out = self.layer1(F.relu(self.bn1(self.conv1(x))))
    logits = []
    for l2, l3, fc in zip(self.layer2s, self.layer3s, self.linears):
      h = l3(l2(out))
      logits.append(fc(F.avg_pool2d(h, h.size()[3]).view(h.size(0), -1)) * self.s)
    return torch.stack(logits, dim=1).mean(dim=1), logits


def _t(a):
  return torch.tensor(np.asarray(a, np.float32))


def _copy_conv_bn(conv, bn, p, s, conv_name, bn_name):
  conv.weight.data = _t(np.transpose(p[conv_name]["kernel"], (3, 2, 0, 1)))
  bn.weight.data, bn.bias.data = _t(p[bn_name]["scale"]), _t(p[bn_name]["bias"])
  bn.running_mean.data, bn.running_var.data = _t(s[bn_name]["mean"]), _t(s[bn_name]["var"])


def _copy_stage(seq, p, s):
  for i, block in enumerate(seq):
    pb, sb = p[f"block{i}"], s[f"block{i}"]
    _copy_conv_bn(block.conv1, block.bn1, pb, sb, "conv1", "bn1")
    _copy_conv_bn(block.conv2, block.bn2, pb, sb, "conv2", "bn2")


def copy_into_torch(net, variables, use_norm):
  p, s = variables["params"], variables["batch_stats"]
  trunk, trunk_s = p["backbone"], s["backbone"]
  _copy_conv_bn(net.conv1, net.bn1, trunk["stem"], trunk_s["stem"], "conv", "bn")
  _copy_stage(net.layer1, trunk["stage0"], trunk_s["stage0"])
  for e in range(len(net.layer2s)):
    pe, se = p[f"expert{e}"], s[f"expert{e}"]
    _copy_stage(net.layer2s[e], pe["backbone"]["stage1"], se["backbone"]["stage1"])
    _copy_stage(net.layer3s[e], pe["backbone"]["stage2"], se["backbone"]["stage2"])
    head = pe["head"]
    if use_norm:
      net.linears[e].weight.data = _t(head["kernel"])
    else:
      net.linears[e].weight.data = _t(np.asarray(head["fc"]["kernel"]).T)
      net.linears[e].bias.data = _t(head["fc"]["bias"])


def _random_batch_stats(variables, seed):
  """Non-trivial running statistics, so that eval mode tests them too."""
  rng = np.random.default_rng(seed)
  def draw(path, x):
    name = path[-1].key
    return (rng.uniform(0.5, 1.5, x.shape) if name == "var"
            else rng.normal(0, 0.1, x.shape)).astype(np.float32)
  return {**variables,
          "batch_stats": jax.tree_util.tree_map_with_path(draw, variables["batch_stats"])}


@pytest.mark.parametrize("use_norm,reduce_dimension,num_experts",
                         [(True, True, 3), (False, False, 2)])
def test_ride_resnet32_matches_the_reference_network(use_norm, reduce_dimension, num_experts):
  k = 7
  model = models.get_model("ride_resnet32", k, head="normalized" if use_norm else "linear",
                           num_experts=num_experts, reduce_dimension=reduce_dimension)
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  variables = _random_batch_stats(model.init(jax.random.key(1), jnp.asarray(x), train=False),
                                  2)
  net = TorchRIDE(k, num_experts, reduce_dimension, use_norm)
  copy_into_torch(net, variables, use_norm)
  n_torch = sum(p.numel() for p in net.parameters())
  n_ltjax = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
  assert n_torch == n_ltjax
  xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)))
  s = net.s
  for train in (False, True):
    net.train(train)
    with torch.no_grad():
      ref, ref_experts = net(xt)
    if train:
      out, _ = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    else:
      out = model.apply(variables, jnp.asarray(x), train=False)
    np.testing.assert_allclose(s * np.asarray(out["logits"]), ref.numpy(), rtol=2e-4,
                               atol=2e-4)
    np.testing.assert_allclose(s * np.asarray(out["expert_logits"]),
                               torch.stack(ref_experts).numpy(), rtol=2e-4, atol=2e-4)
    assert out["features"].shape == (4, 48 if reduce_dimension else 64)
    np.testing.assert_allclose(out["features"], np.mean(out["expert_features"], 0), rtol=1e-6)


def test_ride_resnet32_cifar100_config_parameter_count():
  """configs/config_imbalance_cifar100_ride.json: 3 experts, reduce_dimension, use_norm."""
  model = models.get_model("ride_resnet32", 100, head="normalized")
  net = TorchRIDE(100, 3, True, True)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
  assert n == sum(p.numel() for p in net.parameters()) == 783_856
  assert models.is_multi_expert(model) and not models.is_multi_expert(models.resnet32(10))


def test_multi_expert_errors():
  with pytest.raises(ValueError, match="num_experts must be >= 1"):
    ride_models.ride_resnet32(10, num_experts=0)
  with pytest.raises(ValueError, match="Unknown head"):
    ride_models.ride_resnet32(10, head="cos")


# --------------------------------------------------------- the reference loss (torch float64)


class RefRIDELoss:
  """model/loss.py `RIDELoss` (float64): `__init__`, `_hook_before_epoch`, `forward`.

  `counts=None` is the reference without `cls_num_list` (plain CE, no temperatures);
  `epoch` of `hook` is the trainer's 1-based epoch.
  """

  def __init__(self, counts=None, base_diversity_temperature=1.0, max_m=0.5, s=30,
               reweight_epoch=-1, base_loss_factor=1.0, additional_diversity_factor=-0.2,
               reweight_factor=0.05):
    self.base_loss_factor = base_loss_factor
    self.reweight_epoch = reweight_epoch
    self.base_diversity_temperature = base_diversity_temperature
    self.additional_diversity_factor = additional_diversity_factor
    self.per_cls_weights_base = self.per_cls_weights_diversity = None
    if counts is None:
      self.m_list = self.per_cls_weights_enabled = self.per_cls_weights_enabled_diversity = None
      return
    counts = np.asarray(counts, np.float64)
    m_list = 1.0 / np.sqrt(np.sqrt(counts))
    self.m_list = torch.tensor(m_list * (max_m / np.max(m_list)))
    self.s = s
    if reweight_epoch != -1:
      w = (1.0 - 0.9999) / (1.0 - np.power(0.9999, counts))
      self.per_cls_weights_enabled = torch.tensor(w / np.sum(w) * len(counts))
    else:
      self.per_cls_weights_enabled = None
    p = counts / np.sum(counts)
    w = len(p) * p * reweight_factor + 1 - reweight_factor
    self.per_cls_weights_enabled_diversity = torch.tensor(w / np.max(w))

  def hook(self, epoch):
    if self.reweight_epoch != -1:
      on = epoch > self.reweight_epoch
      self.per_cls_weights_base = self.per_cls_weights_enabled if on else None
      self.per_cls_weights_diversity = self.per_cls_weights_enabled_diversity if on else None

  def final_output(self, x, target):
    index = F.one_hot(target, x.shape[1]).bool()
    batch_m = (self.m_list[None, :] @ index.double().T).view(-1, 1)
    return torch.where(index, x - batch_m * self.s, x)

  def __call__(self, output_logits, target, expert_logits):
    loss = 0
    for item in expert_logits:
      if self.m_list is None:
        loss = loss + self.base_loss_factor * F.cross_entropy(item, target)
      else:
        loss = loss + self.base_loss_factor * F.cross_entropy(
            self.final_output(item, target), target, weight=self.per_cls_weights_base)
      if self.per_cls_weights_diversity is not None:
        temp = self.base_diversity_temperature * self.per_cls_weights_diversity.view(1, -1)
        t_mean = temp.mean().item()
      else:
        temp = t_mean = self.base_diversity_temperature
      log_q = F.log_softmax(item / temp, dim=1)
      with torch.no_grad():
        p = F.softmax(output_logits / temp, dim=1)
      loss = loss + self.additional_diversity_factor * t_mean * t_mean * F.kl_div(
          log_q, p, reduction="batchmean")
    return loss


LOSS_COUNTS = np.array([50, 20, 9, 4, 2])
E, BL, KL_ = 3, 6, len(LOSS_COUNTS)


def reference_value_and_grad(cos, labels, lam, partner, ref, s):
  """lam ref(y) + (1 - lam) ref(y_partner) on s * cos, and its gradient w.r.t. cos (the
  mixed-label form of the reference's loss: CMO's `criterion(out, y_a) * lam + ...`)."""
  z = torch.tensor(np.asarray(cos, np.float64), requires_grad=True)
  scaled = s * z
  mean = scaled.mean(0)
  y = torch.tensor(labels, dtype=torch.long)
  loss = lam * ref(mean, y, list(scaled)) + (1 - lam) * ref(mean, y[partner], list(scaled))
  loss.backward()
  return float(loss.detach()), z.grad.numpy()


def ltjax_value_and_grad(cos, labels, lam, partner, criterion, hp, epoch):
  mixed = mixing.MixedLabels(jnp.asarray(labels), jnp.asarray(labels[partner]),
                             jnp.float32(lam))
  base = lambda z: criterion.compute(z, mixed, jnp.asarray(LOSS_COUNTS), epoch)
  f = lambda c: ride.ride_loss(c, base, hp, jnp.asarray(LOSS_COUNTS), epoch,
                               criterion.logit_scale)
  value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(cos, jnp.float32))
  return float(value), np.asarray(grad)


@pytest.mark.parametrize("lam", [1.0, 0.3])
@pytest.mark.parametrize("epoch1", [160, 161, 190])  # the reference's 1-based epoch
def test_ride_ldam_drw_loss_matches_the_reference(epoch1, lam):
  """RIDE's CIFAR config: LDAM-DRW (s=30), reweighting and class temperatures after 160."""
  rng = np.random.default_rng(epoch1)
  cos = np.tanh(rng.normal(size=(E, BL, KL_)))
  labels = rng.integers(0, KL_, BL).astype(np.int32)
  partner = rng.permutation(BL)
  ref = RefRIDELoss(LOSS_COUNTS, reweight_epoch=160)
  ref.hook(epoch1)
  want, want_grad = reference_value_and_grad(cos, labels, lam, partner, ref, 30.0)
  criterion = criteria.Criterion(kind="ldam", drw_epoch=160)
  hp = ride.RIDE(diversity_epoch=160)
  got, grad = ltjax_value_and_grad(cos, labels, lam, partner, criterion, hp,
                                   jnp.int32(epoch1 - 1))
  np.testing.assert_allclose(got, want, rtol=2e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lam", [1.0, 0.6])
def test_ride_ce_loss_matches_the_reference_without_class_counts(lam):
  """RIDELoss without cls_num_list: plain CE per expert, the diversity term at T0."""
  rng = np.random.default_rng(3)
  logits = 2.0 * rng.normal(size=(E, BL, KL_))
  labels = rng.integers(0, KL_, BL).astype(np.int32)
  partner = rng.permutation(BL)
  ref = RefRIDELoss(None, base_diversity_temperature=1.5, additional_diversity_factor=-0.4,
                    base_loss_factor=0.7)
  want, want_grad = reference_value_and_grad(logits, labels, lam, partner, ref, 1.0)
  hp = ride.RIDE(diversity_factor=-0.4, diversity_temperature=1.5, base_loss_factor=0.7)
  got, grad = ltjax_value_and_grad(logits, labels, lam, partner, criteria.Criterion(), hp,
                                   jnp.int32(50))
  np.testing.assert_allclose(got, want, rtol=2e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_class_temperatures_follow_the_reference_formula():
  counts = np.array([500.0, 100.0, 10.0])
  p = counts / counts.sum()
  w = 3 * p * 0.05 + 0.95
  np.testing.assert_allclose(ride.class_temperatures(counts, 2.0, 0.05), 2.0 * w / w.max(),
                             rtol=1e-6)
  hp = ride.RIDE(diversity_temperature=2.0, diversity_epoch=4)
  np.testing.assert_allclose(ride.temperatures(hp, counts, jnp.int32(3)), [2.0] * 3)
  np.testing.assert_allclose(ride.temperatures(hp, counts, jnp.int32(4)), 2.0 * w / w.max(),
                             rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"diversity_temperature": 0.0}, "diversity_temperature"),
    ({"diversity_reweight": 1.5}, "diversity_reweight"),
    ({"diversity_epoch": -1}, "diversity_epoch"),
])
def test_ride_hyperparameters_are_validated(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ride.RIDE(**kwargs)


# ------------------------------------------------- the ImageNet networks (fb_resnets, torch)


class TorchBottleneck(tnn.Module):
  """torchvision-style Bottleneck of RIDE's fb_resnets (1x1, 3x3 strided, 1x1 x4)."""

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1, self.bn1 = tnn.Conv2d(inplanes, planes, 1, bias=False), tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(4 * planes)
    self.downsample = (tnn.Sequential(tnn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False),
                                      tnn.BatchNorm2d(4 * planes))
                       if stride != 1 or inplanes != 4 * planes else None)


def torch_ride_resnet50_parameters(num_classes, num_experts, routers, top_choices):
  """Parameters of RIDEResNet / EAResNet `ResNet(Bottleneck, [3, 4, 6, 3], reduce_dimension,
  use_norm)`: stem, layer1-2 shared, layer3s / layer4s (192 / 384 planes), NormedLinear."""
  def layer(inplanes, planes, blocks, stride):
    return tnn.Sequential(*[TorchBottleneck(inplanes if b == 0 else 4 * planes, planes,
                                            stride if b == 0 else 1) for b in range(blocks)])
  modules = [tnn.Conv2d(3, 64, 7, 2, 3, bias=False), tnn.BatchNorm2d(64),
             layer(64, 64, 3, 1), layer(256, 128, 4, 2)]
  for _ in range(num_experts):
    modules += [layer(512, 192, 6, 2), layer(768, 384, 3, 2), TorchNormedLinear(1536,
                                                                                num_classes)]
  if routers:
    modules += [tnn.Linear(1536, 16) for _ in range(num_experts - 1)]
    modules.append(tnn.Linear(16 + top_choices, 1))
  return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("routers", [False, True])
def test_ride_resnet50_has_the_reference_parameters(routers):
  model = models.get_model("ride_resnet50", 1000, head="normalized", routers=routers,
                           top_choices=50)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                train=False))
  params = variables["params"]
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  assert n == torch_ride_resnet50_parameters(1000, 3, routers, 50)
  assert sorted(params["backbone"]) == ["stage0", "stage1", "stem"]
  assert sorted(params["expert0"]["backbone"]) == ["stage2", "stage3"]
  assert params["expert2"]["head"]["kernel"].shape == (1536, 1000)


def test_ride_resnet10_outputs():
  model = models.get_model("ride_resnet10", 7, num_experts=2, routers=True, top_choices=3)
  x = jnp.zeros((2, 64, 64, 3))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))[0]
  assert out["expert_logits"].shape == (2, 2, 7) and out["router_logits"].shape == (1, 2)
  assert out["features"].shape == (2, 384) and out["routed_logits"].shape == (2, 7)


def test_manifold_mixing_layers_of_a_multi_expert_net():
  """Layer s of the network: the trunk's stages, then each expert's, mixed once."""
  mix_fn = lambda h: h + 1.0
  assert [int(ride_models.expert_mix((s, mix_fn), 1)[0]) for s in range(4)] == [-1, -1, 1, 2]
  model = models.ride_small_cnn(4, widths=(4, 8, 8), num_experts=2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16, 16, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  base = model.apply(variables, x, train=False)
  last = model.apply(variables, x, train=False, mix=(3, mix_fn))  # after the last stage
  np.testing.assert_allclose(last["expert_features"], base["expert_features"] + 1.0,
                             rtol=1e-6)
  logits = [np.asarray(model.apply(variables, x, train=False, mix=(s, mix_fn))["logits"])
            for s in range(4)]
  assert all(not np.allclose(a, b) for i, a in enumerate(logits) for b in logits[i + 1:])
  with pytest.raises(ValueError, match="Mixing layer must be in 0..3"):
    model.apply(variables, x, train=False, mix=(4, mix_fn))
