"""`resnet18_cifar` against a PyTorch transcription of the MAMix code's ResNet-18.

Reference: ntucllab/imbalanced-DL net/resnet_liu.py (after kuangliu/pytorch-cifar) with the
bias-free `dot_product_classifier` of net/network.py, transcribed below; the weights of an
ltjax initialisation are copied into it and both networks run on the same images.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import models
from ltjax.models import resnet_imagenet

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
K = 10


class TorchBasicBlock(nn.Module):
  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                    nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class TorchResNet18(nn.Module):
  def __init__(self, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    in_planes, layers = 64, []
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
      layers.append(nn.Sequential(TorchBasicBlock(in_planes, planes, stride),
                                  TorchBasicBlock(planes, planes, 1)))
      in_planes = planes
    self.layers = nn.ModuleList(layers)
    self.classifier = nn.Linear(512, num_classes, bias=False)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    for layer in self.layers:
      out = layer(out)
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return self.classifier(out)


def _conv(t, kernel):
  t.weight.data = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())


def _bn(t, params, stats):
  t.weight.data = torch.from_numpy(np.asarray(params["scale"]).copy())
  t.bias.data = torch.from_numpy(np.asarray(params["bias"]).copy())
  t.running_mean.data = torch.from_numpy(np.asarray(stats["mean"]).copy())
  t.running_var.data = torch.from_numpy(np.asarray(stats["var"]).copy())


def load(net, variables):
  """Copies ltjax's variables into the transcription, layer by layer."""
  p, s = variables["params"]["backbone"], variables["batch_stats"]["backbone"]
  _conv(net.conv1, p["stem"]["conv"]["kernel"])
  _bn(net.bn1, p["stem"]["bn"], s["stem"]["bn"])
  for i, layer in enumerate(net.layers):
    for j, block in enumerate(layer):
      bp, bs = p[f"stage{i}"][f"block{j}"], s[f"stage{i}"][f"block{j}"]
      _conv(block.conv1, bp["conv1"]["kernel"])
      _bn(block.bn1, bp["bn1"], bs["bn1"])
      _conv(block.conv2, bp["conv2"]["kernel"])
      _bn(block.bn2, bp["bn2"], bs["bn2"])
      if len(block.shortcut):
        _conv(block.shortcut[0], bp["shortcut_conv"]["kernel"])
        _bn(block.shortcut[1], bp["shortcut_bn"], bs["shortcut_bn"])
  net.classifier.weight.data = torch.from_numpy(
      np.asarray(variables["params"]["head"]["fc"]["kernel"]).T.copy())


@pytest.fixture(scope="module")
def pair():
  model = models.get_model("resnet18_cifar", K, head="linear_nobias")
  x = jnp.zeros((2, 32, 32, 3))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  rng = np.random.default_rng(0)
  # Non-trivial running statistics, so that evaluation mode is checked too.
  variables = {"params": variables["params"], "batch_stats": jax.tree.map(
      lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if v.ndim else v, jnp.float32),
      variables["batch_stats"])}
  net = TorchResNet18(K)
  load(net, variables)
  return model, variables, net


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("train", [False, True])
def test_outputs_match_the_reference_network(pair, size, train):
  model, variables, net = pair
  images = np.random.default_rng(1).normal(size=(4, size, size, 3)).astype(np.float32)
  if train:
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    net.train()
  else:
    logits = model.apply(variables, images, train=False)
    net.eval()
  with torch.no_grad():
    expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(np.asarray(logits["logits"]), expected, rtol=2e-4, atol=2e-4)


def test_parameter_count_and_torch_default_init(pair):
  model, variables, net = pair
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
  assert count == sum(p.numel() for p in net.parameters()) == 11_173_952
  kernel = np.asarray(variables["params"]["backbone"]["stage3"]["block1"]["conv1"]["kernel"])
  bound = 1 / np.sqrt(9 * 512)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), +)
  assert 0.99 * bound < np.abs(kernel).max() <= bound * (1 + 1e-6)
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)


def test_unknown_stem_is_refused():
  with pytest.raises(ValueError, match="valid stems: imagenet, cifar"):
    resnet_imagenet.stem_def("tiny", resnet_imagenet.TORCH_DEFAULT_CONV_INIT)
