"""Parity of DBN-Mix and SBN-Mix with the authors' code (soony1213/DBN-Mix) and paper.

Reference semantics, transcribed on the PyTorch side (`main.py` `train`, `losses.py`
`mixup` / `MixLoss`, `models/resnet_cifar.py` `ResNet_s.forward`; paper: Baik, Yoon and Choi,
"DBN-Mix", sec. 3.2-3.4, eq. 8-20, /work/shared/seeds/001_*.txt):

- Batches: a uniform (instance-balanced) batch (x_u, y_u) from the shuffled loader and a
  reverse-sampled batch (x_v, y_v) from the dataset's dual sampler (`--dual-sampler-type
  balance` in `experiments/cifar10.sh`, i.e. gamma = inf, class-balanced). Their dataset
  indices come from ltjax's draws (`indices_u`, `indices_v`). The code mixes
  `input[randperm]` with `input_b`: a permutation of an already shuffled batch, which
  changes nothing in distribution; the replay pairs row i of u with row i of v.
- One lam ~ Beta(alpha, alpha) per batch (ltjax's draw `lam`).
- DBN-Mix (`--use-experts`): `lam_c = max(lam, 1 - lam)`;
  `x_c = lam_c x_u + (1 - lam_c) x_v`, `x_r = (1 - lam_c) x_u + lam_c x_v`, soft labels
  likewise (paper eq. 8-14: lam_r = min(lam, 1 - lam), the same thing).
  Code: `output_cb = model(x_c, classifier_cb=True)` then
  `output_rb = model(x_r, classifier_rb=True)`: the trunk (stem + layer1-2) runs once per
  batch, first on x_c, then on x_r, each a separate BatchNorm batch; branch c is `layer3`
  + `linear`, branch r `rb_block` + `linear_rb`. `loss = 0.5 (L(z_c, y_c) + L(z_r, y_r))`
  (`--loss-lambda 0.5`; paper eq. 19).
- SBN-Mix (one branch, paper eq. 21-23; code `mixup` without experts):
  `x = lam x_u + (1 - lam) x_v`, labels likewise, `loss = L(z, y)`. The code then computes
  its training accuracy with `model(input_ori)`, a train-mode pass of the clean uniform
  batch outside the loss: no gradient, but the running statistics see the mixed batch and
  then the clean one (ltjax option `clean_pass=True`).
- Temperatures (training only): paper eq. 15-16 `B_k = eps n_k / n_max + 1 - eps`, code
  `MixLoss`: `phi = eps K n_k / n_max + 1 - eps`; both `T_k = (max B / B_k)^(1/eta)`,
  logits divided by T (eta = 3, eps = 0.6: `experiments/cifar10.sh`).
- Loss: paper eq. 18 cross-entropy of softmax(z / T); code `MixLoss`:
  `-mean_i sum_k [y log p + (1 - y) log(1 - p)]` on `p = softmax(z / T)` (no clamp in the
  code; ltjax clamps p to [1e-7, 1 - 1e-7], so the replay asserts the clamp is inactive).
- Inference (paper eq. 20, code `validate`): `(z_c + z_r) / 2` with both branches on the
  same input, running BatchNorm statistics, no temperature.

Two protocols are replayed:
- ltjax's default (paper temperature and CE) with the trunk run **once on concat([x_c,
  x_r])**: that is ltjax's documented choice (`ltjax.models.dual_branch`, trunk="joint"),
  not the code's; the PyTorch side concatenates too, so this replay checks ltjax against
  the paper's loss under ltjax's own BatchNorm batching.
- The code protocol: `temperature="code"`, `loss_form="binary"`, and for DBN-Mix
  `trunk="separate"` (two trunk passes, x_c first), for SBN-Mix `clean_pass=True`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import methods
from parity import harness
from parity.harness import F, torch

ETA, EPS = 3.0, 0.6
CLAMP = 1e-7  # ltjax's binary-form clamp; the code has none, so it must stay inactive


# ------------------------------------------------------------------------- reference pieces

def temperatures(form: str) -> "torch.Tensor":
  """T_k: paper eq. 15-16 (form="paper") or the code's `MixLoss` phi (form="code")."""
  n = torch.from_numpy(harness.COUNTS.astype(np.float64))
  slope = EPS * harness.K if form == "code" else EPS
  b = slope * n / n.max() + (1.0 - EPS)
  return ((b.max() / b) ** (1.0 / ETA)).float()


def temperature_loss(logits, soft, form: str, loss_form: str) -> "torch.Tensor":
  """Paper: CE of softmax(z / T). Code (`MixLoss`): binary form on softmax(z / T)."""
  scaled = logits / temperatures(form)
  if loss_form == "ce":
    return -(soft * F.log_softmax(scaled, dim=1)).sum(dim=1).mean()
  pred = torch.softmax(scaled, dim=1)
  assert CLAMP < pred.min().item() and pred.max().item() < 1 - CLAMP, "clamp would be active"
  return -torch.mean(torch.sum(torch.log(pred) * soft, dim=1)
                     + torch.sum(torch.log(1 - pred) * (1 - soft), dim=1))


def bilateral_batch(draws):
  """(x_u, y_u one-hot, x_v, y_v one-hot, lam) from ltjax's draws."""
  x_u, x_v = harness.torch_inputs(draws["indices_u"]), harness.torch_inputs(draws["indices_v"])
  y_u = F.one_hot(harness.torch_labels(draws["indices_u"]), harness.K).float()
  y_v = F.one_hot(harness.torch_labels(draws["indices_v"]), harness.K).float()
  return x_u, y_u, x_v, y_v, float(draws["lam"])


def dbn_step(form: str, loss_form: str, trunk: str):
  """The DBN-Mix step: bilateral pair, two branches, 0.5 / 0.5 weighting."""
  def step(model, draws, epoch):
    del epoch
    x_u, y_u, x_v, y_v, lam = bilateral_batch(draws)
    lam_c = max(lam, 1.0 - lam)
    x_c, y_c = lam_c * x_u + (1 - lam_c) * x_v, lam_c * y_u + (1 - lam_c) * y_v
    x_r, y_r = (1 - lam_c) * x_u + lam_c * x_v, (1 - lam_c) * y_u + lam_c * y_v
    if trunk == "separate":  # the code: model(x_c, classifier_cb), then model(x_r, classifier_rb)
      z_c = model.run_branch(model.branch_c, model.trunk(x_c))
      z_r = model.run_branch(model.branch_r, model.trunk(x_r))
    else:  # ltjax's joint trunk (not the code's): one trunk pass on both batches
      h = model.trunk(torch.cat([x_c, x_r]))
      z_c = model.run_branch(model.branch_c, h[:len(x_c)])
      z_r = model.run_branch(model.branch_r, h[len(x_c):])
    return 0.5 * (temperature_loss(z_c, y_c, form, loss_form)
                  + temperature_loss(z_r, y_r, form, loss_form))
  return step


def sbn_step(form: str, loss_form: str, clean_pass: bool = False):
  """The SBN-Mix step: one lambda, vanilla label (code: then the accuracy pass)."""
  def step(model, draws, epoch):
    del epoch
    x_u, y_u, x_v, y_v, lam = bilateral_batch(draws)
    x, y = lam * x_u + (1 - lam) * x_v, lam * y_u + (1 - lam) * y_v
    loss = temperature_loss(model(x), y, form, loss_form)
    if clean_pass:  # `accuracy(model(input_ori), target_ori)`: train mode, not in the loss
      model(x_u)
    return loss
  return step


def schedule(steps: int = 4):
  return harness.clean_schedule(steps, seed=3, epoch=1)


def check_draws(draws) -> None:
  """The draws the replay relies on: a scalar lambda, two batches of size B."""
  for d in draws:
    assert d["indices_u"].shape == d["indices_v"].shape == (harness.BATCH,)
    assert np.ndim(d["lam"]) == 0 and 0.0 <= float(d["lam"]) <= 1.0


def check_inference(run: harness.LtjaxRun) -> None:
  """Paper eq. 20 / code `validate`: mean of the branches' logits, eval mode, no T.

  Both sides evaluate the trained state (the replay has already matched it): a fresh
  PyTorch model gets ltjax's parameters and running statistics, so the running-variance
  convention (`harness.VarianceConvention`) does not enter.
  """
  idx = np.arange(harness.N)[::3]
  outputs = run.model.apply({"params": run.state.params, "batch_stats": run.state.batch_stats},
                            harness.normalize(jnp.asarray(harness.IMAGES[idx])), train=False)
  model = harness.TorchDualSmallCNN()
  harness.load_flax(model, run.state.params, run.state.batch_stats)
  model.eval()
  with torch.no_grad():
    h = model.trunk(harness.torch_inputs(idx))
    want = 0.5 * (model.run_branch(model.branch_c, h) + model.run_branch(model.branch_r, h))
  harness.assert_close(np.asarray(run.recipe.logits(outputs)), want.numpy(),
                       "inference logits (z_c + z_r) / 2")


# ------------------------------------------------------------------------- tests

def test_temperatures_match_paper_and_code_formulas():
  """ltjax's T_k against eq. 15-16 and the code's phi (K = 4 here; tail T differs)."""
  counts = jnp.asarray(harness.COUNTS)
  for form in ("paper", "code"):
    recipe = methods.get_recipe("dbn_mix", num_epochs=10, temperature=form)
    np.testing.assert_allclose(np.asarray(recipe.temperatures(counts)),
                               temperatures(form).numpy(), rtol=1e-6)
  assert temperatures("code")[-1] > temperatures("paper")[-1] * 1.05


@pytest.mark.parametrize("options,reference", [
    # ltjax defaults: paper T and CE; the trunk once on concat([x_c, x_r]) (ltjax's choice).
    ({}, ("paper", "ce", "joint")),
    # soony1213/DBN-Mix: code T, binary loss, the trunk once per batch (x_c first).
    ({"temperature": "code", "loss_form": "binary", "trunk": "separate"},
     ("code", "binary", "separate")),
], ids=["paper", "code"])
def test_dbn_mix_matches_reference_step(options, reference):
  recipe = methods.get_recipe("dbn_mix", num_epochs=10, **options)
  assert (recipe.temperature, recipe.loss_form, recipe.trunk) == reference
  run = harness.LtjaxRun(recipe, model_name="dual_small_cnn")
  draws = harness.replay(run, harness.TorchDualSmallCNN(), dbn_step(*reference), schedule())
  check_draws(draws)
  check_inference(run)


def test_sbn_mix_default_matches_paper_step():
  recipe = methods.get_recipe("sbn_mix", num_epochs=10)
  run = harness.LtjaxRun(recipe)
  draws = harness.replay(run, harness.TorchSmallCNN(), sbn_step("paper", "ce"), schedule())
  check_draws(draws)


def test_sbn_mix_code_protocol_matches_reference_step():
  """Code T, binary loss, and the code's train-mode accuracy pass on the clean batch."""
  recipe = methods.get_recipe("sbn_mix", num_epochs=10, temperature="code",
                              loss_form="binary", clean_pass=True)
  run = harness.LtjaxRun(recipe)
  draws = harness.replay(run, harness.TorchSmallCNN(), sbn_step("code", "binary", True),
                         schedule())
  check_draws(draws)


def test_code_protocol_recipes_set_the_replayed_options():
  """`protocol="code"` builds the recipes the code-protocol replays above transcribe."""
  dbn = methods.get_recipe("dbn_mix", num_epochs=200, protocol="code")
  assert (dbn.temperature, dbn.loss_form, dbn.trunk) == ("code", "binary", "separate")
  assert (dbn.eta, dbn.eps, dbn.alpha, dbn.gamma) == (ETA, EPS, 1.0, float("inf"))
  sbn = methods.get_recipe("sbn_mix", num_epochs=200, protocol="code")
  assert (sbn.temperature, sbn.loss_form, sbn.clean_pass) == ("code", "binary", True)
