"""Parity of CP-Mix and its classifier fine-tuning with the CP-Mix paper (no public code).

Reference semantics transcribed here (seeds/002, "Mix from failure: confusion-pairing mixup
for long-tailed recognition": sec. 4.1-4.3, Algorithm 1, Appendix A, Appendix B.3 / Table 6):
- every step: `L = L_ERM(B)` with balanced softmax (sec. 4.3: "We use balanced softmax for
  l_ERM"): `CE(z + log(n_k / N), y)`, mean over the clean batch B, model in train mode;
- "Get predictions P" of that forward pass and "Append misclassifications
  [(y_i, y_i,p) | y_i != y_i,p] to CP" (Algorithm 1; eq. 6, accumulated over the whole of
  training, footnote 2: counts C[t, p]). The count matrix after each step is compared
  *exactly* with the engine's method state;
- stage 2, Algorithm 1's `if e > E_cp` (1-based epochs: 0-based `epoch >= stage2_epoch`),
  after the append of the same step:
  * CP batch: B' true classes uniform over the classes, a confused class for each from the
    CP entries of its row, one image of each class uniformly (`D_c`); mixed with eq. 7,
    `x = lam x_t + (1 - lam) x_m`, labels with eq. 9, `lam_y = t lam + (1 - t) n_m /
    (n_t + n_m)` (t = 0.5), loss cross-entropy of the soft label (eq. 11);
  * Appendix A, eq. 13 and 16: a mixup regularisation term on "the same training batch",
    "the same mixup strategy for both" (the same alpha and label rule, eq. 9), cross-entropy;
  * `L = L_BS + gamma_cp L_CP + gamma_mix L_mix` (eq. 13; Table 6: alpha = 1.5,
    gamma = 2.5, t = 0.5);
  * stage 1 is ERM plus the collection of confusion pairs, nothing else (Appendix B.3: "The
    only difference between our first stage and ERM training is that CP-Mix should collect
    confusion-pairs");
- each term is its own forward pass in train mode, so BatchNorm sees three batches per
  stage-2 step. Algorithm 1 computes L_ERM on B first and the CP term after it; the paper
  does not order the Appendix-A mixup term against the CP term. The transcription uses
  clean, mix, CP (ltjax's order, consistent with Algorithm 1); the order only moves the
  running statistics;
- a row of C without confusions: the paper samples from an empty subset (undefined);
  ltjax draws uniformly from the other classes. The replay checks each drawn confused class
  against the reference counts: a positive entry of a non-empty row, never the true class;
- fine-tuning (Appendix B.3.1, Table 6): "finetune the models with the backbone frozen",
  30 epochs, lr 0.1 (CIFAR-10), momentum 0.9, weight decay 0; the class-balanced batches
  and the cross-entropy are SPEC section 4 (the paper names neither). Built as
  experiments/runner.py:build_phases does: `optim.sgd(trainable=path_mask(("head",)))`,
  `train_batch_stats=False`. PyTorch side: `model.eval()` (BatchNorm uses and keeps its
  running statistics), `requires_grad_(False)` on the backbone, `SGD(model.head.parameters())`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ltjax import methods
from ltjax.training import optim, state as state_lib
from parity import harness
from parity.harness import F, torch

STAGE2 = 2
T, GAMMA_CP, GAMMA_MIX = 0.5, 2.5, 2.5
P_MIN = 1e-3
COUNTS = harness.COUNTS


def one_hot(y: "torch.Tensor") -> "torch.Tensor":
  return F.one_hot(y, harness.K).float()


def soft_ce(logits: "torch.Tensor", soft: "torch.Tensor") -> "torch.Tensor":
  """Cross-entropy of soft labels, mean over the batch."""
  return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def cpmix_label(lam: float, y_1: "torch.Tensor", y_2: "torch.Tensor") -> "torch.Tensor":
  """eq. 9-10: y = M(y_1, y_2, t lam + (1 - t) n_2 / (n_1 + n_2))."""
  n_1 = torch.from_numpy(COUNTS[y_1.numpy()]).double()
  n_2 = torch.from_numpy(COUNTS[y_2.numpy()]).double()
  lam_y = (T * lam + (1 - T) * n_2 / (n_1 + n_2)).float()[:, None]
  return lam_y * one_hot(y_1) + (1 - lam_y) * one_hot(y_2)


class ReferenceCPMix:
  """Algorithm 1 + Appendix A, with its own confusion counts; checks the engine's."""

  def __init__(self, run: harness.LtjaxRun):
    self.run = run
    self.confusion = np.zeros((harness.K, harness.K), np.int64)
    self.log_prior = torch.log(torch.from_numpy(COUNTS / COUNTS.sum()).float())
    self.empty_rows_drawn = 0

  def check_cp_draws(self, draws: dict) -> None:
    """The CP batch's classes and images against the reference's counts (sec. 4.3)."""
    c_t, c_m = draws["cp_true"], draws["cp_confused"]
    np.testing.assert_array_equal(harness.LABELS[draws["cp_indices_t"]], c_t)
    np.testing.assert_array_equal(harness.LABELS[draws["cp_indices_m"]], c_m)
    for t, m in zip(c_t, c_m):
      row = self.confusion[t].copy()
      row[t] = 0
      assert m != t, f"confused class {m} is the true class"
      if row.sum() > 0:
        assert row[m] > 0, f"class {t} was never predicted as {m}: row {row}"
      else:
        self.empty_rows_drawn += 1

  def step(self, model, draws, epoch):
    x, y = harness.torch_inputs(draws["indices"]), harness.torch_labels(draws["indices"])
    logits = model(x)  # L_ERM on B (train mode)
    loss = F.cross_entropy(logits + self.log_prior, y)
    predictions = logits.detach().argmax(dim=1).numpy()
    for true, pred in zip(y.numpy(), predictions):  # append misclassifications to CP
      if true != pred:
        self.confusion[true, pred] += 1
    np.testing.assert_array_equal(np.asarray(self.run.state.method_state["confusion"]),
                                  self.confusion, err_msg="confusion counts")
    if epoch >= STAGE2:  # Algorithm 1: e > E_cp (1-based)
      partner = torch.from_numpy(np.asarray(draws["mix_partner"], np.int64))
      lam = float(draws["mix_lam"])
      x_mix = lam * x + (1 - lam) * x[partner]  # Appendix A: mixup of the same batch
      loss_mix = soft_ce(model(x_mix), cpmix_label(lam, y, y[partner]))
      self.check_cp_draws(draws)
      lam = float(draws["cp_lam"])
      x_t, x_m = (harness.torch_inputs(draws[k]) for k in ("cp_indices_t", "cp_indices_m"))
      y_t, y_m = (torch.from_numpy(np.asarray(draws[k], np.int64))
                  for k in ("cp_true", "cp_confused"))
      loss_cp = soft_ce(model(lam * x_t + (1 - lam) * x_m), cpmix_label(lam, y_t, y_m))
      loss = loss + GAMMA_CP * loss_cp + GAMMA_MIX * loss_mix
    return loss


def cp_mix_run(**overrides) -> harness.LtjaxRun:
  recipe = methods.get_recipe("cp_mix", num_epochs=10, **{"stage2_epoch": STAGE2, **overrides})
  assert (recipe.t, recipe.gamma_cp, recipe.gamma_mix) == (T, GAMMA_CP, GAMMA_MIX)
  return harness.LtjaxRun(recipe)


def test_cp_mix_matches_paper_step_across_stage2():
  """3 stage-1 steps (confusions accumulate) then 3 stage-2 steps, one method state."""
  run = cp_mix_run()
  reference = ReferenceCPMix(run)
  schedule = (harness.clean_schedule(3, seed=0, epoch=STAGE2 - 1)
              + harness.clean_schedule(3, seed=1, epoch=STAGE2))
  draws = harness.replay(run, harness.TorchSmallCNN(), reference.step, schedule)
  assert reference.confusion.sum() > 0
  for d, (epoch, _) in zip(draws, schedule):  # stage 1 draws no CP / mix batch
    assert (epoch >= STAGE2) == bool(np.any(d["cp_indices_t"]) or np.any(d["cp_lam"]))


def test_cp_mix_defaults_follow_table_6():
  recipe = methods.get_recipe("cp_mix", num_epochs=300)
  assert recipe.stage2_epoch == 200  # stage 1 = 200 of 300 epochs
  assert (recipe.alpha, recipe.t, recipe.gamma_cp, recipe.gamma_mix) == (1.5, 0.5, 2.5, 2.5)
  assert recipe.mix_from == "stage2" and recipe.mix_label_rule == "cpmix"


def test_cp_batch_law():
  """Sec. 4.3: true classes uniform, confused class ~ its row of C, images uniform in class.

  Over many stage-2 engine steps (C changes every step): the observed (true, confused)
  table is tested against the sum over draws of each draw's row law under the counts the
  engine held at that step (`uniform over the others` for an empty row).
  """
  run = cp_mix_run(stage2_epoch=0)
  idx = harness.clean_schedule(1, seed=0)[0][1]
  k = harness.K
  observed, expected = np.zeros((k, k)), np.zeros((k, k))
  true_all, images = [], []
  for _ in range(300):
    _, d = run.step(0, idx)
    confusion = np.asarray(run.state.method_state["confusion"], np.float64)
    for t, m in zip(d["cp_true"], d["cp_confused"]):
      row = confusion[t].copy()
      row[t] = 0
      if row.sum() == 0:
        row = np.ones(k)
        row[t] = 0
      expected[t] += row / row.sum()
      observed[t, m] += 1
    true_all.append(d["cp_true"])
    images.append(np.r_[d["cp_indices_t"], d["cp_indices_m"]])
  true_all, images = np.concatenate(true_all), np.concatenate(images)
  assert stats.chisquare(np.bincount(true_all, minlength=k)).pvalue > P_MIN
  assert not observed[expected == 0].any(), "a confused class outside its row's support"
  cells = expected > 0
  assert stats.chisquare(observed[cells], expected[cells]).pvalue > P_MIN
  for c in range(k):
    members = np.flatnonzero(harness.LABELS == c)
    hits = np.array([(images == i).sum() for i in members])
    assert stats.chisquare(hits).pvalue > P_MIN, f"class {c}: images not uniform"


# ------------------------------------------------------------------------- fine-tuning

FINETUNE = harness.Optimiser(lr=0.1, momentum=0.9, weight_decay=0.0)  # Table 6, CIFAR-10


def finetune_run(pretrain_steps: int = 2) -> tuple[harness.LtjaxRun, harness.LtjaxRun]:
  """A CP-Mix run after a few steps, and the fine-tuning phase started from its state."""
  main = cp_mix_run()
  for epoch, idx in harness.clean_schedule(pretrain_steps, seed=0, epoch=0):
    main.step(epoch, idx)
  ft = harness.LtjaxRun(methods.CPMixFinetune(), optimiser=FINETUNE,
                        trainable=optim.path_mask(("head",)), train_batch_stats=False)
  ft.state = state_lib.start_phase(main.state, ft.recipe, ft.tx, COUNTS)
  return main, ft


def test_finetune_matches_frozen_backbone_step():
  _, ft = finetune_run()
  model = harness.TorchSmallCNN()
  harness.load_flax(model, ft.state.params, ft.state.batch_stats)
  model.eval()  # BatchNorm in inference mode: running statistics used, not updated
  for p in model.stages.parameters():
    p.requires_grad_(False)
  opt = torch.optim.SGD(model.head.parameters(), lr=FINETUNE.lr, momentum=FINETUNE.momentum,
                        weight_decay=FINETUNE.weight_decay)
  params_0 = harness._leaves(ft.state.params)
  stats_0 = harness._leaves(ft.state.batch_stats)
  torch_stats_0 = [t.clone() for _, t, _ in harness.correspondence(model)[1]]
  pairs_p, pairs_s = harness.correspondence(model)
  idx = harness.clean_schedule(1, seed=5)[0][1]  # unused by the class-balanced recipe
  for step in range(4):
    metrics, draws = ft.step(0, idx)
    opt.zero_grad()
    x, y = harness.torch_inputs(draws["indices"]), harness.torch_labels(draws["indices"])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    harness.assert_close(metrics["loss"], loss.item(), f"step {step} loss")
    opt.step()
    grads, params = ft.gradients, harness._leaves(ft.state.params)
    for path, tensor, layout in pairs_p:
      harness.assert_close(harness.to_torch_layout(params[path], layout),
                           tensor.detach().numpy(), f"step {step} parameter {path}")
      if path.startswith("head/"):
        harness.assert_close(harness.to_torch_layout(grads[path], layout),
                             tensor.grad.numpy(), f"step {step} gradient {path}")
      else:  # frozen: bit-identical on the ltjax side, no gradient on the torch side
        np.testing.assert_array_equal(params[path], params_0[path], err_msg=path)
        assert tensor.grad is None
    for path, value in harness._leaves(ft.state.batch_stats).items():
      np.testing.assert_array_equal(value, stats_0[path], err_msg=path)
    for (path, tensor, _), before in zip(pairs_s, torch_stats_0):
      np.testing.assert_array_equal(tensor.numpy(), before.numpy(), err_msg=path)
      harness.assert_close(stats_0[path], tensor.numpy(), f"statistic {path}", floor=1.0)
  head_0 = params_0["head/fc/kernel"]
  assert not np.array_equal(harness._leaves(ft.state.params)["head/fc/kernel"], head_0)


def test_finetune_batches_are_class_balanced():
  _, ft = finetune_run(pretrain_steps=0)
  idx = harness.clean_schedule(1, seed=5)[0][1]
  drawn = np.concatenate([ft.step(0, idx)[1]["indices"] for _ in range(400)])
  classes = harness.LABELS[drawn]
  assert stats.chisquare(np.bincount(classes, minlength=harness.K)).pvalue > P_MIN
  for c in range(harness.K):
    members = np.flatnonzero(harness.LABELS == c)
    hits = np.array([(drawn == i).sum() for i in members])
    assert stats.chisquare(hits).pvalue > P_MIN, f"class {c}: images not uniform"
