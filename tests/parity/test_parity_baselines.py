"""Parity of ERM, DRW and LDAM-DRW with the LDAM-DRW reference code (kaidic/LDAM-DRW).

Reference semantics (`cifar_train.py`, `losses.py`, `models/resnet_cifar.py`):
- ERM: `nn.CrossEntropyLoss(weight=None)` on the clean batch.
- DRW: from the DRW epoch, `per_cls_weights = (1 - beta) / (1 - beta^n_k)` normalised to
  sum to K (beta = 0.9999; 0 before, i.e. ones), passed as `CrossEntropyLoss(weight=w)`,
  whose mean is `sum_i w_{y_i} l_i / sum_i w_{y_i}`.
- LDAM: `m_k = 1 / n_k^(1/4)` rescaled to max 0.5; the target logit loses m_y;
  `F.cross_entropy(s * output, target, weight=w)`, s = 30, on the cosine logits of
  `NormedLinear` (columns renormalised to unit norm at initialisation).
"""

from __future__ import annotations

import numpy as np

from ltjax import methods
from parity import harness
from parity.harness import F, torch

DRW_EPOCH = 2


def ldam_margins() -> "torch.Tensor":
  m = 1.0 / np.sqrt(np.sqrt(harness.COUNTS.astype(np.float64)))
  return torch.from_numpy(m * (0.5 / m.max())).float()


def ce_step(weighted: bool):
  def step(model, draws, epoch):
    x, y = harness.torch_inputs(draws["indices"]), harness.torch_labels(draws["indices"])
    w = harness.drw_weights(0.9999 if weighted and epoch >= DRW_EPOCH else 0.0)
    return F.cross_entropy(model(x), y, weight=torch.from_numpy(w))
  return step


def ldam_step(model, draws, epoch):
  x, y = harness.torch_inputs(draws["indices"]), harness.torch_labels(draws["indices"])
  w = torch.from_numpy(harness.drw_weights(0.9999 if epoch >= DRW_EPOCH else 0.0))
  logits = model(x)
  index = F.one_hot(y, harness.K).bool()
  batch_m = ldam_margins()[y][:, None]
  output = torch.where(index, logits - batch_m, logits)
  return F.cross_entropy(30.0 * output, y, weight=w)


def schedule():
  """Three steps before DRW and three after it."""
  return (harness.clean_schedule(3, seed=0, epoch=DRW_EPOCH - 1)
          + harness.clean_schedule(3, seed=1, epoch=DRW_EPOCH))


def test_erm_matches_reference_step():
  run = harness.LtjaxRun(methods.get_recipe("erm", num_epochs=10))
  harness.replay(run, harness.TorchSmallCNN(), ce_step(weighted=False), schedule())


def test_drw_matches_reference_weighted_mean():
  recipe = methods.get_recipe("drw", num_epochs=10, drw_epoch=DRW_EPOCH)
  run = harness.LtjaxRun(recipe)
  harness.replay(run, harness.TorchSmallCNN(), ce_step(weighted=True), schedule())


def test_ldam_drw_matches_reference_step():
  recipe = methods.get_recipe("ldam_drw", num_epochs=10, drw_epoch=DRW_EPOCH)
  run = harness.LtjaxRun(recipe)
  model = harness.TorchSmallCNN(head="normalized")
  harness.replay(run, model, ldam_step, schedule())


def test_ldam_head_columns_start_at_unit_norm():
  """NormedLinear: `uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)`: unit-norm columns."""
  run = harness.LtjaxRun(methods.get_recipe("ldam_drw", num_epochs=10))
  kernel = np.asarray(run.state.params["head"]["kernel"], np.float64)
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-6)
