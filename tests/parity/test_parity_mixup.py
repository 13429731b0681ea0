"""Parity of Mixup(-DRW), Remix-DRW and MAMix-DRW with the imbalanced-DL reference code.

Reference: GitHub ntucllab/imbalanced-DL, `imbalanceddl/strategy/_mixup_drw.py`,
`_remix_drw.py`, `_mamix_drw.py`, `trainer.py`, `net/network.py` and
`example/config/config_cifar10.yaml`; the MAMix paper (seeds/004, eq. 6, 13-16, Algorithm 1).
The PyTorch step below is transcribed from that code; ltjax hands it only its draws (the
clean-batch indices, the partner permutation `index` and the batch's lambda).

Per step (`train_one_epoch`), model in train mode:
- one `lam ~ Beta(alpha, alpha)` per batch (alpha = 1) and `index = torch.randperm(B)`;
- Mixup (`mixup_data`): `x = lam x + (1 - lam) x[index]`, `lam_y = lam`;
- Remix (`remix_data`, k_majority = 3, tau = 0.5): `x = lam_x x + (1 - lam_x) x[index]`;
  per pair `lam_y = 0` if `n_i / n_j >= 3 and lam_x < tau`, `1` if `n_i / n_j <= 1/3 and
  1 - lam_x < tau`, else `lam_x`;
- MAMix (`mamix_data`, `get_k`, `get_lambda`, `mamix_ratio = -0.25`): the code's lambda
  weighs the *partner*, `x = (1 - lam_x) x + lam_x x[index]`; `k_i = n_i^-0.25`,
  `mid = k_i / (k_i + k_j)`; `lam_y = 1 - 0.5 lam_x / mid` if `lam_x < mid`, else
  `0.5 (1 - lam_x) / (1 - mid)`; `lam_y` weighs `y_a = y` (the clean sample). ltjax draws
  the paper's factor (weight of the clean sample), so the replay maps `lam_x = 1 - lam`;
- the code-protocol clean pass: `output_prec = model(_input)` (train mode, before the mixed
  batch, used only for accuracy: it moves the BatchNorm running statistics, not the loss);
- loss: `criterion = nn.CrossEntropyLoss(weight=w, reduction='none')`,
  `(lam_y * criterion(out, y_a) + (1 - lam_y) * criterion(out, y_b)).mean()`;
- DRW (`get_criterion`, rebuilt every epoch): `idx = epoch // 160`, `beta = [0, 0.9999][idx]`,
  `w = (1 - beta) / (1 - beta^n)` normalised to sum to K (ones before epoch 160);
- code protocol: `nn.Linear(64, K, bias=False)` head (`dot_product_classifier`) and the clean
  pass; ltjax's default protocol has a biased head and no clean pass.

The tests replay steps on both sides of the DRW epoch (`drw_epoch=2` here: the reference's
`epoch // 160` becomes `epoch // 2`, and every replayed epoch is < 4).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from ltjax import methods
from ltjax.methods import mixup
from parity import harness
from parity.harness import torch

DRW_EPOCH = 2
K_MAJORITY, TAU = 3, 0.5  # config_cifar10.yaml
MAMIX_RATIO = -0.25  # config_cifar10.yaml: k = n^mamix_ratio

HAS_CLEAN_PASS = "clean_pass" in {f.name for f in dataclasses.fields(mixup.Mixup)}


# ------------------------------------------------------------------------- reference rules

def remix_lam_y(lam_x: float, n_i: int, n_j: int) -> float:
  """`remix_data`: the per-pair label factor (torch int64 / int64 is a float32 ratio)."""
  ratio = float(torch.tensor(n_i) / torch.tensor(n_j))
  if ratio >= K_MAJORITY and lam_x < TAU:
    return 0.0
  if ratio <= 1 / K_MAJORITY and (1 - lam_x) < TAU:
    return 1.0
  return lam_x


def mamix_lam_y(lam_x: float, n_i: int, n_j: int) -> float:
  """`get_k` + `get_lambda` of `_mamix_drw.py` (lam_x weighs the partner x[index])."""
  k1, k2 = pow(n_i, MAMIX_RATIO), pow(n_j, MAMIX_RATIO)
  middle = k1 / (k1 + k2)
  if lam_x < middle:
    return (-0.5) * (lam_x - 0.0) / middle + 1.0
  if lam_x > middle:
    return (lam_x - 1.0) * (0.5 - 0.0) / (middle - 1.0)
  raise ValueError("[-] Check Boundary Case !")  # as the reference does


def reference_batch(rule: str, draws: dict) -> tuple:
  """(mixed input, y_a, y_b, lam_y (B,)) of the reference's *_data function."""
  x, y = harness.torch_inputs(draws["indices"]), harness.torch_labels(draws["indices"])
  index = torch.from_numpy(np.asarray(draws["partner"], np.int64))
  lam = float(draws["lam"])  # ltjax: weight of the clean sample x
  n_a, n_b = harness.COUNTS[y.numpy()], harness.COUNTS[y.numpy()[index.numpy()]]
  if rule == "mamix":
    lam_x = 1.0 - lam  # the code's lambda weighs x[index]
    mixed = (1 - lam_x) * x + lam_x * x[index, :]
    lam_y = [mamix_lam_y(lam_x, int(a), int(b)) for a, b in zip(n_a, n_b)]
  elif rule == "remix":
    mixed = lam * x + (1 - lam) * x[index, :]
    lam_y = [remix_lam_y(lam, int(a), int(b)) for a, b in zip(n_a, n_b)]
  else:
    mixed = lam * x + (1 - lam) * x[index, :]
    lam_y = [lam] * len(y)
  return mixed, y, y[index], torch.tensor(lam_y, dtype=torch.float64)


def drw_weights(epoch: int, drw: bool) -> "torch.Tensor":
  """`get_criterion`: betas = [0, 0.9999], idx = epoch // drw_epoch (ones without DRW)."""
  beta = [0.0, 0.9999][epoch // DRW_EPOCH] if drw else 0.0
  effective_num = 1.0 - np.power(beta, harness.COUNTS)
  w = (1.0 - beta) / np.array(effective_num)
  w = w / np.sum(w) * harness.K
  return torch.FloatTensor(w)


def reference_step(rule: str, drw: bool, clean_pass: bool, seen: list):
  def step(model, draws, epoch):
    mixed, y_a, y_b, lam_y = reference_batch(rule, draws)
    np.testing.assert_allclose(draws["lam_y"], lam_y.numpy(), rtol=0, atol=2e-6,
                               err_msg=f"{rule}: ltjax's lam_y against the reference rule")
    seen.append((float(draws["lam"]), lam_y.numpy(), y_a.numpy(), y_b.numpy()))
    criterion = torch.nn.CrossEntropyLoss(weight=drw_weights(epoch, drw), reduction="none")
    if clean_pass:
      model(harness.torch_inputs(draws["indices"]))  # output_prec: accuracy only
    output_mix = model(mixed)
    loss = torch.mul(criterion(output_mix, y_a), lam_y) + torch.mul(
        criterion(output_mix, y_b), 1 - lam_y)
    return loss.mean()
  return step


def schedule():
  """Three steps before the DRW epoch and three from it on."""
  return (harness.clean_schedule(3, seed=0, epoch=DRW_EPOCH - 1)
          + harness.clean_schedule(3, seed=1, epoch=DRW_EPOCH))


RULES = {"mixup": "vanilla", "mixup_drw": "vanilla", "remix_drw": "remix",
         "mamix_drw": "mamix"}


def code_recipe(name: str, **kwargs):
  """The registry's `protocol="code"` recipe, which sets the replayed code options."""
  recipe = methods.get_recipe(name, num_epochs=10, protocol="code", **kwargs)
  assert recipe.clean_pass and recipe.head == "linear_nobias", recipe
  return recipe


def run_parity(name: str, protocol: str) -> list:
  kwargs = {"drw_epoch": DRW_EPOCH} if name.endswith("_drw") else {}
  if protocol == "code":
    recipe, head = code_recipe(name, **kwargs), "linear_nobias"
  else:
    recipe, head = methods.get_recipe(name, num_epochs=10, **kwargs), "linear"
  assert recipe.head == head
  assert not getattr(recipe, "clean_pass", False) or protocol == "code"
  rule = RULES[name].replace("vanilla", "mixup")
  seen = []
  run = harness.LtjaxRun(recipe)
  harness.replay(run, harness.TorchSmallCNN(head=head),
                 reference_step(rule, name.endswith("_drw"), protocol == "code", seen),
                 schedule())
  return seen


def check_rule_exercised(name: str, seen: list) -> None:
  """The replay must reach the rule's non-vanilla branches, else it proves little."""
  if name == "remix_drw":
    relabelled = [((lam_y == 0) | (lam_y == 1)) & (lam_y != lam) for lam, lam_y, _, _ in seen]
    assert any(r.any() for r in relabelled), "no Remix relabelling in the replayed steps"
  if name == "mamix_drw":
    assert any((np.abs(lam_y - lam) > 1e-3).any() for lam, lam_y, _, _ in seen)
    assert {lam < 0.5 for lam, *_ in seen} == {True, False}, "one MAMix branch only"


@pytest.mark.parametrize("name", ["mixup", "mixup_drw", "remix_drw", "mamix_drw"])
def test_default_protocol_matches_reference_step(name):
  """ltjax defaults: biased linear head, no clean pass (one BatchNorm update per step)."""
  check_rule_exercised(name, run_parity(name, "default"))


@pytest.mark.parametrize("name", ["mixup", "mixup_drw", "remix_drw", "mamix_drw"])
def test_code_protocol_matches_reference_step(name):
  """imbalanced-DL protocol: bias-free head, clean pass then mixed pass (two BN updates)."""
  check_rule_exercised(name, run_parity(name, "code"))


def test_drw_epoch_default_is_reference_epoch():
  """`idx = self.epoch // 160` for the 200-epoch schedule: DRW from epoch 160 (0-based)."""
  for name in ("mixup_drw", "remix_drw", "mamix_drw"):
    recipe = methods.get_recipe(name, num_epochs=200)
    assert recipe.criterion.drw_epoch == 160
    assert recipe.criterion.reduction == "mean"  # `.mean()` of the weighted per-sample CE
    assert recipe.alpha == 1.0  # `mixup_data(..., alpha=1.0)`


def test_mamix_engine_draws_follow_code_convention_law():
  """The engine's (input weight, lam_y) has the reference code's law.

  The code draws `lam_x ~ Beta(alpha, alpha)` and gives the clean sample the weight
  `1 - lam_x` and the label factor `get_lambda(lam_x)`. The engine's weight `lam` must be
  Beta(alpha, alpha) as `1 - lam_x` is (KS test over many engine steps), and its `lam_y`
  must be the code's function of that weight for every pair.
  """
  alpha = 0.5
  run = harness.LtjaxRun(methods.get_recipe("mamix_drw", num_epochs=10, alpha=alpha))
  perm = harness.clean_schedule(1, seed=3)[0][1]
  lams = []
  for _ in range(300):
    _, draws = run.step(0, perm)
    lam = float(draws["lam"])
    lams.append(lam)
    y = harness.LABELS[perm]
    n_a, n_b = harness.COUNTS[y], harness.COUNTS[y[draws["partner"]]]
    code = [mamix_lam_y(1.0 - lam, int(a), int(b)) for a, b in zip(n_a, n_b)]
    np.testing.assert_allclose(draws["lam_y"], code, rtol=0, atol=2e-6)
  code_weights = 1.0 - stats.beta(alpha, alpha).rvs(size=2000, random_state=0)
  assert stats.ks_2samp(lams, code_weights).pvalue > 1e-3
  assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
