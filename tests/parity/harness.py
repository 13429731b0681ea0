"""Step-level parity of ltjax recipes with PyTorch transcriptions of the reference steps.

Both sides start from the same parameters (a SmallCNN with BatchNorm defined in both
frameworks, Flax weights copied into PyTorch), see the same images (no augmentation, the
same normalisation) and the same random outcomes: ltjax runs its real training step
(`ltjax.training.loop.make_train_step`, which returns the recipe's `LossOutput.draws`:
dataset indices, lambda, partners, CutMix boxes, OT pairs), and the PyTorch side is handed
those draws. Each test module writes its PyTorch step from the reference code's semantics
(or the paper's algorithm where no code is public); nothing on the PyTorch side calls
ltjax.

`replay` runs both sides for a few steps and compares, after every step:
- the loss;
- the gradient of every parameter (ltjax's gradient is captured inside its optimiser
  chain, so it is the gradient the engine applied);
- every parameter after the SGD update (torch.optim.SGD against ltjax's optax chain);
- the BatchNorm running statistics.

Tolerance (float32): a relative error of 1e-5 per leaf, in the L2 norm (accumulation
order differs between XLA and PyTorch kernels). The running variance has one documented
difference: Flax updates it with the biased batch variance, PyTorch with the unbiased one
(a factor n / (n - 1), n = B*H*W values per channel). `VarianceConvention` records, with
forward hooks on every PyTorch BatchNorm, the gap this makes,
`d_t = 0.9 d_{t-1} + 0.1 (var_unbiased - var_biased)`, and the comparison subtracts it, so
the running variance too is checked to 1e-5.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need PyTorch: pip install -e '.[parity]'")
F = torch.nn.functional

from ltjax import recipe as recipe_lib  # noqa: E402
from ltjax import samplers  # noqa: E402
from ltjax.models import get_model  # noqa: E402
from ltjax.training import loop, optim, state as state_lib  # noqa: E402

torch.set_num_threads(1)

# A small long-tailed dataset: K = 4 classes, 24/12/6/3 images of 8x8x3.
K = 4
COUNTS = np.array([24, 12, 6, 3])
N = int(COUNTS.sum())
HW, CHANNELS = 8, 3
WIDTHS = (4, 8)
BATCH = 8
MEAN, STD = 0.5, 0.25
REL = 1e-5


def make_images(seed: int = 0) -> np.ndarray:
  """(N, 8, 8, 3) uint8 images, random but fixed."""
  return np.random.default_rng(seed).integers(0, 256, (N, HW, HW, CHANNELS), np.uint8)


LABELS = np.repeat(np.arange(K), COUNTS).astype(np.int32)
IMAGES = make_images()


def normalize(images: jax.Array) -> jax.Array:
  """(x / 255 - 0.5) / 0.25, the same on both sides."""
  return (images.astype(jnp.float32) / 255.0 - MEAN) / STD


def torch_inputs(indices: Any, images: np.ndarray = IMAGES) -> "torch.Tensor":
  """The normalised NCHW float32 batch of dataset rows `indices` (PyTorch side)."""
  x = torch.from_numpy(images[np.asarray(indices)]).float() / 255.0
  return ((x - MEAN) / STD).permute(0, 3, 1, 2).contiguous()


def torch_labels(indices: Any) -> "torch.Tensor":
  return torch.from_numpy(LABELS[np.asarray(indices)]).long()


def device_data(images: np.ndarray = IMAGES) -> recipe_lib.DeviceDataset:
  return recipe_lib.DeviceDataset.from_arrays(images, LABELS, K)


# ------------------------------------------------------------------------- PyTorch models

class TorchStage(torch.nn.Module):
  """relu(bn(conv3x3(x))), PyTorch defaults (the block of ltjax's SmallCNN)."""

  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.conv = torch.nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
    self.bn = torch.nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class NormedLinear(torch.nn.Module):
  """LDAM's cosine classifier: normalize(x, dim=1) @ normalize(W, dim=0)."""

  def __init__(self, d: int, k: int):
    super().__init__()
    self.weight = torch.nn.Parameter(torch.empty(d, k))

  def forward(self, x):
    return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


def torch_head(kind: str, d: int, k: int) -> torch.nn.Module:
  if kind == "normalized":
    return NormedLinear(d, k)
  return torch.nn.Linear(d, k, bias=kind == "linear")


def torch_stages(widths: Sequence[int], c_in: int, first: int = 0) -> list:
  stages, c = [], c_in
  for i, w in enumerate(widths):
    stages.append(TorchStage(c, w, 1 if first + i == 0 else 2))
    c = w
  return stages


class TorchSmallCNN(torch.nn.Module):
  """Stages of conv-BN-ReLU, global average pooling, head (ltjax `small_cnn`)."""

  def __init__(self, head: str = "linear", widths: Sequence[int] = WIDTHS):
    super().__init__()
    self.stages = torch.nn.Sequential(*torch_stages(widths, CHANNELS))
    self.head = torch_head(head, widths[-1], K)

  def features(self, x):
    return self.stages(x).mean(dim=(2, 3))

  def forward(self, x):
    return self.head(self.features(x))


class TorchDualSmallCNN(torch.nn.Module):
  """Shared trunk (all stages but the last) and two branches (last stage + head each)."""

  def __init__(self, head: str = "linear", widths: Sequence[int] = WIDTHS):
    super().__init__()
    self.trunk = torch.nn.Sequential(*torch_stages(widths[:-1], CHANNELS))
    def branch():
      stage, = torch_stages(widths[-1:], widths[-2], first=len(widths) - 1)
      return torch.nn.ModuleDict({"stage": stage, "head": torch_head(head, widths[-1], K)})
    self.branch_c, self.branch_r = branch(), branch()

  @staticmethod
  def run_branch(branch, h):
    return branch["head"](branch["stage"](h).mean(dim=(2, 3)))


# ------------------------------------------------------------------------- weight transfer

def _leaves(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """Flattens a nested dict to {"a/b/c": array}."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else key
    if isinstance(value, dict):
      out.update(_leaves(value, path))
    else:
      out[path] = np.asarray(value)
  return out


def _stage_pairs(flax_prefix: str, stage: TorchStage) -> list:
  return [(f"{flax_prefix}/conv/kernel", stage.conv.weight, "conv"),
          (f"{flax_prefix}/bn/scale", stage.bn.weight, None),
          (f"{flax_prefix}/bn/bias", stage.bn.bias, None)]


def _stat_pairs(flax_prefix: str, stage: TorchStage) -> list:
  return [(f"{flax_prefix}/bn/mean", stage.bn.running_mean, None),
          (f"{flax_prefix}/bn/var", stage.bn.running_var, None)]


def _head_pairs(flax_prefix: str, head: torch.nn.Module) -> list:
  if isinstance(head, NormedLinear):
    return [(f"{flax_prefix}/kernel", head.weight, None)]
  pairs = [(f"{flax_prefix}/fc/kernel", head.weight, "dense")]
  if head.bias is not None:
    pairs.append((f"{flax_prefix}/fc/bias", head.bias, None))
  return pairs


def correspondence(model: torch.nn.Module) -> tuple[list, list]:
  """(parameter pairs, statistic pairs): (flax path, torch tensor, layout) triples."""
  params, stats = [], []
  if isinstance(model, TorchSmallCNN):
    for i, stage in enumerate(model.stages):
      params += _stage_pairs(f"backbone/stage{i}/block0", stage)
      stats += _stat_pairs(f"backbone/stage{i}/block0", stage)
    params += _head_pairs("head", model.head)
    return params, stats
  for i, stage in enumerate(model.trunk):
    params += _stage_pairs(f"trunk/stage{i}/block0", stage)
    stats += _stat_pairs(f"trunk/stage{i}/block0", stage)
  last = len(model.trunk)
  for name in ("branch_c", "branch_r"):
    branch = getattr(model, name)
    params += _stage_pairs(f"{name}/backbone/stage{last}/block0", branch["stage"])
    stats += _stat_pairs(f"{name}/backbone/stage{last}/block0", branch["stage"])
    params += _head_pairs(f"{name}/head", branch["head"])
  return params, stats


def to_torch_layout(x: np.ndarray, layout: str | None) -> np.ndarray:
  if layout == "conv":  # HWIO -> OIHW
    return np.transpose(x, (3, 2, 0, 1))
  if layout == "dense":  # (D, K) -> (K, D)
    return x.T
  return x


def load_flax(model: torch.nn.Module, params: Any, batch_stats: Any) -> None:
  """Copies Flax parameters and BatchNorm statistics into the PyTorch model."""
  flat_p, flat_s = _leaves(params), _leaves(batch_stats)
  pairs_p, pairs_s = correspondence(model)
  assert {p for p, _, _ in pairs_p} == set(flat_p), "parameter trees differ"
  with torch.no_grad():
    for path, tensor, layout in pairs_p:
      tensor.copy_(torch.from_numpy(np.array(to_torch_layout(flat_p[path], layout))))
    for path, tensor, _ in pairs_s:
      tensor.copy_(torch.from_numpy(np.array(flat_s[path])))


# ------------------------------------------------------------------------- ltjax side

def capture_gradients() -> optax.GradientTransformation:
  """An identity transformation whose state is the last gradient it received."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda updates, state, params=None: (updates, updates))


@dataclasses.dataclass(frozen=True)
class Optimiser:
  """PyTorch SGD settings shared by both sides."""
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 2e-4
  nesterov: bool = False

  def ltjax(self, trainable: Any = None) -> optax.GradientTransformation:
    """capture_gradients() then `optim.sgd`; `trainable` is its optional mask (frozen leaves)."""
    return optax.chain(capture_gradients(),
                       optim.sgd(self.lr, self.momentum, self.nesterov, self.weight_decay,
                                 trainable=trainable))

  def torch(self, model: torch.nn.Module) -> "torch.optim.SGD":
    return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, nesterov=self.nesterov)


@dataclasses.dataclass
class LtjaxRun:
  """One ltjax training run on the parity dataset, stepped by hand.

  `trainable` (an `optim.sgd` mask, e.g. `optim.path_mask(("head",))`) and
  `train_batch_stats=False` build a frozen-backbone phase as experiments/runner.py does;
  `tx` is the ltjax optimiser, e.g. for `state_lib.start_phase`.
  """
  recipe: recipe_lib.Recipe
  model_name: str = "small_cnn"
  seed: int = 0
  num_epochs: int = 10
  optimiser: Optimiser = Optimiser()
  images: np.ndarray = dataclasses.field(default_factory=lambda: IMAGES)
  trainable: Any = None
  train_batch_stats: bool = True

  def __post_init__(self):
    self.model = get_model(self.model_name, K, head=self.recipe.head, widths=WIDTHS)
    self.data = device_data(self.images)
    self.tx = tx = self.optimiser.ltjax(self.trainable)
    self.state = state_lib.create_state(
        self.model, self.recipe, tx, jnp.zeros((1, HW, HW, CHANNELS)),
        state_lib.run_keys(self.seed).init, COUNTS)
    self._step = jax.jit(loop.make_train_step(
        self.recipe, self.model.apply, tx, batch_size=BATCH, num_epochs=self.num_epochs,
        augment_fn=None, normalize_fn=normalize, seed=self.seed,
        train_batch_stats=self.train_batch_stats))

  def step(self, epoch: int, indices: np.ndarray) -> tuple[dict, dict]:
    """One engine step; returns (metrics, draws) as numpy."""
    self.state, metrics, draws = self._step(self.state, self.data, jnp.int32(epoch),
                                            jnp.asarray(indices, jnp.int32))
    return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, draws)

  @property
  def gradients(self) -> dict[str, np.ndarray]:
    return _leaves(self.state.opt_state[0])


# ------------------------------------------------------------------------- comparison

def rel_error(actual: np.ndarray, expected: np.ndarray, floor: float = 1e-12) -> float:
  """||actual - expected|| / max(||expected||, floor), in float64."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), floor))


def assert_close(actual, expected, what: str, rel: float = REL, floor: float = 1e-12) -> None:
  err = rel_error(actual, expected, floor)
  assert err <= rel, f"{what}: relative error {err:.2e} > {rel:.0e}"


class VarianceConvention:
  """Tracks, per PyTorch BatchNorm, running_var(PyTorch) - running_var(Flax convention)."""

  def __init__(self, model: torch.nn.Module):
    self.gap = {}
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        self.gap[module.running_var] = torch.zeros_like(module.running_var)
        module.register_forward_pre_hook(self._hook)

  def _hook(self, module, inputs):
    if not module.training:
      return
    x = inputs[0].detach().double()
    n = x.numel() // x.shape[1]
    biased = x.var(dim=(0, 2, 3), unbiased=False)
    m = module.momentum
    gap = self.gap[module.running_var]
    gap.copy_((1 - m) * gap + m * (biased * n / (n - 1) - biased).float())

  def flax_variance(self, running_var: "torch.Tensor") -> np.ndarray:
    return (running_var - self.gap[running_var]).numpy()


def compare(run: LtjaxRun, model: torch.nn.Module, step: int,
            variance: VarianceConvention, rel: float = REL) -> None:
  """Gradients, parameters and running statistics of both sides after `step`."""
  pairs_p, pairs_s = correspondence(model)
  grads, params = run.gradients, _leaves(run.state.params)
  stats = _leaves(run.state.batch_stats)
  for path, tensor, layout in pairs_p:
    torch_grad = np.zeros(tensor.shape) if tensor.grad is None else tensor.grad.numpy()
    assert_close(to_torch_layout(grads[path], layout), torch_grad,
                 f"step {step} gradient {path}", rel)
    assert_close(to_torch_layout(params[path], layout), tensor.detach().numpy(),
                 f"step {step} parameter {path}", rel)
  for path, tensor, _ in pairs_s:
    expected = variance.flax_variance(tensor) if path.endswith("/var") else tensor.numpy()
    # Running means start at 0: measure them against the unit scale of BN inputs.
    assert_close(stats[path], expected, f"step {step} statistic {path}", rel,
                 floor=np.sqrt(expected.size))


TorchStep = Callable[[torch.nn.Module, dict, int], "torch.Tensor"]


def replay(run: LtjaxRun, model: torch.nn.Module, torch_step: TorchStep,
           schedule: Sequence[tuple[int, np.ndarray]], rel: float = REL) -> list[dict]:
  """Runs both sides over `schedule` [(epoch, clean indices), ...] and compares each step.

  `torch_step(model, draws, epoch)` is the PyTorch transcription of one step's loss, given
  ltjax's draws of that step; it must leave the model in train mode. Returns the draws.
  """
  load_flax(model, run.state.params, run.state.batch_stats)
  model.train()
  opt = run.optimiser.torch(model)
  variance = VarianceConvention(model)
  all_draws = []
  for t, (epoch, indices) in enumerate(schedule):
    metrics, draws = run.step(epoch, indices)
    opt.zero_grad()
    loss = torch_step(model, draws, epoch)
    loss.backward()
    assert_close(metrics["loss"], loss.item(), f"step {t} loss", rel)
    opt.step()
    compare(run, model, t, variance, rel)
    all_draws.append(draws)
  return all_draws


def clean_schedule(steps: int = 3, seed: int = 0, epoch: int = 0) -> list:
  """`steps` clean batches of an epoch permutation (what the engine feeds a step)."""
  perm = np.asarray(samplers.epoch_permutation(jax.random.key(seed), N, BATCH))
  return [(epoch, perm[t % len(perm)]) for t in range(steps)]


def drw_weights(beta: float = 0.9999) -> np.ndarray:
  """LDAM-DRW's per-class weights: (1 - beta) / (1 - beta^n), normalised to sum to K."""
  effective = 1.0 - np.power(beta, COUNTS.astype(np.float64))
  w = (1.0 - beta) / effective
  return (w / w.sum() * K).astype(np.float32)
