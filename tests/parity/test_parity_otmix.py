"""Parity of CMO and OTmix (ERM / DRW / BALMS / LDAM-DRW) with the authors' code.

Reference semantics, transcribed on the PyTorch side (OTmix: GitHub
JintongGao/Enhancing-Minority-Classes-by-Mixing, `final_otmix/cifar_train.py` `train_OTmix`,
`train_random`, `main_worker`, `losses.py`, and `imagenet_train.py` for the pooled
training-mode features; CMO: naver-ai/cmo `cifar_train.py` `train`; paper: Gao et al.,
/work/shared/seeds/003_*.txt, sec. 3, eq. 1-8):

- Background batch (x_b, y_b): the clean instance-balanced batch (`train_loader`).
  Foreground batch (x_f, y_f): `weighted_train_loader`, drawn from the whole dataset.
  Dataset indices come from ltjax's draws (`indices_back`, `indices_fore`).
- Mix gate: the batch is mixed iff `start < epoch < epochs - end` (0-based epoch) and
  `r < mixup_prob` for `r = np.random.rand(1)` (ltjax's draw `mixed` stands for r; the
  window part is checked against the epoch here). Unmixed: `criterion(model(x_b), y_b)`,
  the clean batch with hard labels, and no other model pass.
- OT or random epoch: `np.random.binomial(1, p=(epoch / epochs) ** u)` picks `train_OTmix`
  (else `train_random`), i.e. OT iff a uniform u < p (ltjax's per-epoch uniform is its method
  state "draw", set here; its gate option "paper" uses t = e + 1, "code" t = e).
- Pairs: OT epoch: `T = ot.sinkhorn(a, b, M, reg=0.01)` with uniform marginals and
  `M[q1, q2] = w (1 - cos(f2[q1], f[q2])) + (1 - w)(1 - cf[y_f[q1], y_b[q2]])` (rows:
  foreground, columns: background; cf the confusion matrix normalised by full rows, then
  its diagonal zeroed), and foreground k takes background `argmax_j T[k, j]`. Random epoch
  (and CMO): foreground k is pasted onto background k of an independently shuffled batch,
  i.e. a random pairing. The partners themselves come from ltjax's draw `partner`; the
  replay also recomputes the OT pairs from its own features (float64 log-domain Sinkhorn)
  and checks ltjax's choice against them.
- OT features: the code runs `model_f = nn.Sequential(*list(model.children())[:-1])` (CIFAR:
  the last stage's map, un-pooled; ImageNet: `f, _ = model(input)`, pooled) in **training
  mode**, first on the background batch, then on the foreground batch, so both passes update
  the BatchNorm running statistics before the mixed pass (ltjax `ot_features=
  "train_unpooled"` / `"train"`). ltjax's default (`"inference"`) is its documented choice,
  not the code's: pooled features of an inference-mode pass, no statistics update; that
  replay adds no extra PyTorch pass either.
- CutMix: one box per batch (from ltjax's draw `box` = (y0, y1, x0, x1), rows / columns);
  `input3[k] = x_b[j(k)]` with `input3[k, :, y0:y1, x0:x1] = x_f[k, :, y0:y1, x0:x1]`,
  `lam = 1 - area / (H W)`.
- Loss: `criterion(output, y_b[j]) * lam + criterion(output, y_f) * (1 - lam)`, each term
  the criterion's own batch mean: ERM `CrossEntropyLoss(weight=w)` (w: DRW
  `(1 - beta) / (1 - beta^n)` normalised to sum K from the DRW epoch, `epoch // 160`;
  None before), i.e. PyTorch's weighted mean normalised by *its own* weight sum; BALMS
  `cross_entropy(z + log(n_k / N), y)` (no DRW); LDAM `cross_entropy(30 (z - m_y 1_y), y,
  weight=w)` on the normalised head, each side with its full margin. The old ltjax loss
  normalised the mixed loss jointly (`sum w (lam l_a + (1 - lam) l_b) / sum (lam w_a +
  (1 - lam) w_b)`); the DRW / LDAM replays assert that this differs from the code by far
  more than the tolerance, so they would catch that defect.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from ltjax import methods
from ltjax.methods import otmix as otmix_lib
from parity import harness
from parity.harness import F, torch

NUM_EPOCHS = 10
DRW_EPOCH = 2
H = W = harness.HW
WINDOW = (1, 1)  # the code's (3, 3) on 240 epochs, scaled to this 10-epoch run

_FIELDS = {f.name for f in dataclasses.fields(otmix_lib.OTmix)}

# A long-tailed classifier's confusion counts (rows: true class, columns: prediction): head
# classes mostly right, tail classes confused with the head, asymmetric.
CONFUSION_COUNTS = np.array([[46, 3, 1, 0],
                             [9, 35, 4, 2],
                             [12, 7, 27, 4],
                             [15, 9, 6, 20]], np.float64)


def f_hat(counts: np.ndarray = CONFUSION_COUNTS) -> np.ndarray:
  """The code's `cf / cf.sum(axis=1)[:, None]`, then `cf[l][l] = 0` (rows not renormalised)."""
  cf = counts / counts.sum(axis=1)[:, None]
  for k in range(len(cf)):
    cf[k][k] = 0
  return cf


# ------------------------------------------------------------------------- criteria

def drw_weights(epoch: int) -> "torch.Tensor | None":
  """`per_cls_weights` of the code's DRW rule (None before the DRW epoch: no weights)."""
  if epoch < DRW_EPOCH:
    return None
  return torch.from_numpy(harness.drw_weights(0.9999))


def ldam_margins() -> "torch.Tensor":
  m = 1.0 / np.sqrt(np.sqrt(harness.COUNTS.astype(np.float64)))
  return torch.from_numpy(m * (0.5 / m.max())).float()


def criterion(kind: str, drw: bool):
  """`criterion(output, target, epoch)` of `main_worker` for the recipe's loss."""
  def ce(out, y, epoch):
    return F.cross_entropy(out, y, weight=drw_weights(epoch) if drw else None)

  def balms(out, y, epoch):
    prior = torch.from_numpy(harness.COUNTS / harness.COUNTS.sum()).float()
    return F.cross_entropy(out + torch.log(prior)[None, :], y)

  def ldam(out, y, epoch):
    index = F.one_hot(y, harness.K).bool()
    output = torch.where(index, out - ldam_margins()[y][:, None], out)
    return F.cross_entropy(30.0 * output, y, weight=drw_weights(epoch) if drw else None)

  return {"ce": ce, "balanced_softmax": balms, "ldam": ldam}[kind]


def joint_normalized(kind: str, out, y_a, y_b, lam: float, epoch: int) -> float:
  """The old (defective) reduction: one weighted mean over both sides, with LDAM's margin
  mixed into one set of logits: sum_ik w_k y_ik l_ik / sum_ik w_k y_ik, y the soft label."""
  soft = lam * F.one_hot(y_a, harness.K).float() + (1 - lam) * F.one_hot(y_b, harness.K).float()
  w = drw_weights(epoch)
  w = torch.ones(harness.K) if w is None else w
  if kind == "ldam":
    out = 30.0 * (out - soft * ldam_margins()[None, :])
  terms = -soft * F.log_softmax(out, dim=1) * w[None, :]
  return float(terms.sum() / (soft * w[None, :]).sum())


# ------------------------------------------------------------------------- OT reference

def np_sinkhorn(cost: np.ndarray, eps: float, tol: float = 1e-13,
                max_iterations: int = 20_000) -> np.ndarray:
  """Float64 log-domain Sinkhorn with uniform marginals (the plan `ot.sinkhorn` converges
  to), run until the column marginal's L1 error is below `tol`."""
  n, m = cost.shape
  f, g = np.zeros(n), np.zeros(m)
  plan = lambda: np.exp((f[:, None] + g[None, :] - cost) / eps)
  for it in range(max_iterations):
    g = eps * (-np.log(m) - special.logsumexp((f[:, None] - cost) / eps, axis=0))
    f = eps * (-np.log(n) - special.logsumexp((g[None, :] - cost) / eps, axis=1))
    if it % 10 == 9 and np.abs(plan().sum(axis=0) - 1 / m).sum() < tol:
      break
  return plan()


def reference_cost(f_back, f_fore, y_back, y_fore, cf, w: float = 0.05) -> np.ndarray:
  """M[q1, q2] = w (1 - cos(f2[q1], f[q2])) + (1 - w)(1 - cf[y_f[q1], y_b[q2]]), float64."""
  zb = f_back.reshape(len(f_back), -1).double().numpy()
  zf = f_fore.reshape(len(f_fore), -1).double().numpy()
  cos = (zf / np.linalg.norm(zf, axis=1, keepdims=True)) @ (
      zb / np.linalg.norm(zb, axis=1, keepdims=True)).T
  return w * (1 - cos) + (1 - w) * (1 - cf[y_fore][:, y_back])


def check_ot_partner(partner: np.ndarray, cost: np.ndarray, eps: float, near: float) -> None:
  """ltjax's partner of every foreground row is (near-)maximal in the reference plan's row,
  and equal to its argmax wherever the row's top two entries are clearly apart."""
  plan = np_sinkhorn(cost, eps)
  rows = np.arange(len(plan))
  best = plan.max(axis=1)
  assert (plan[rows, partner] >= (1 - near) * best).all(), (
      f"partners {partner} vs reference argmax {plan.argmax(axis=1)}")
  top2 = np.sort(plan, axis=1)[:, -2:]
  clear = (top2[:, 1] - top2[:, 0]) > near * top2[:, 1]
  np.testing.assert_array_equal(partner[clear], plan.argmax(axis=1)[clear])


# ------------------------------------------------------------------------- the step

@dataclasses.dataclass
class Reference:
  """The PyTorch transcription of one OTmix / CMO step (see the module docstring).

  Attributes:
    kind, drw: the criterion.
    ot_draw: the epoch's uniform u (OT iff u < p(epoch)); None for CMO (never OT).
    gate: "paper" (p = ((e + 1) / T)^mu) or "code" (p = (e / T)^mu).
    features: "inference" (ltjax default), "train_unpooled" (CIFAR code), "train" (ImageNet
      code): how the OT features are computed and which passes touch the statistics.
    window: the mix window (None: always open).
    confusion: F_hat of the OT cost.
  """
  kind: str = "ce"
  drw: bool = False
  ot_draw: float | None = None
  gate: str = "paper"
  features: str = "inference"
  window: tuple[int, int] | None = None
  confusion: np.ndarray = dataclasses.field(default_factory=f_hat)
  eps: float = 0.01
  log: list = dataclasses.field(default_factory=list)

  def uses_ot(self, epoch: int) -> bool:
    if self.ot_draw is None:
      return False
    t = epoch + 1 if self.gate == "paper" else epoch
    return self.ot_draw < (t / NUM_EPOCHS) ** 1.0

  def window_open(self, epoch: int) -> bool:
    return self.window is None or self.window[0] < epoch < NUM_EPOCHS - self.window[1]

  def ot_features(self, model, x_back, x_fore):
    """(features of background, features of foreground) the code's way (or ltjax's)."""
    with torch.no_grad():  # the code's feature graph never reaches the loss
      if self.features == "inference":  # ltjax default: eval mode, pooled, no stats update
        model.eval()
        f_back, f_fore = model.features(x_back), model.features(x_fore)
        model.train()
      elif self.features == "train_unpooled":  # `model_f` = children()[:-1], train mode
        f_back, f_fore = model.stages(x_back), model.stages(x_fore)
      else:  # ImageNet code: `f, _ = model(input)`, pooled, train mode
        f_back, f_fore = model.features(x_back), model.features(x_fore)
    return f_back, f_fore

  def __call__(self, model, draws, epoch):
    loss_fn = criterion(self.kind, self.drw)
    x_b, y_b = harness.torch_inputs(draws["indices_back"]), harness.torch_labels(
        draws["indices_back"])
    mixed = bool(draws["mixed"])
    if not self.window_open(epoch):
      assert not mixed, f"epoch {epoch} lies outside the mix window {self.window}"
    if not mixed:
      self.log.append({"mixed": False})
      return loss_fn(model(x_b), y_b, epoch)
    x_f, y_f = harness.torch_inputs(draws["indices_fore"]), harness.torch_labels(
        draws["indices_fore"])
    partner = np.asarray(draws["partner"])
    if self.uses_ot(epoch):
      f_back, f_fore = self.ot_features(model, x_b, x_f)
      cost = reference_cost(f_back, f_fore, y_b.numpy(), y_f.numpy(), self.confusion)
      # Inference features differ by the running-variance convention (about 1e-3
      # relative): a looser near-tie tolerance there.
      check_ot_partner(partner, cost, self.eps, 1e-2 if self.features == "inference" else 1e-3)
    else:
      assert sorted(partner.tolist()) == list(range(harness.BATCH)), "random pairs: a permutation"
    y0, y1, x0, x1 = (int(v) for v in draws["box"])
    p = torch.from_numpy(partner.copy()).long()
    x = x_b[p].clone()
    x[:, :, y0:y1, x0:x1] = x_f[:, :, y0:y1, x0:x1]
    lam = 1 - ((y1 - y0) * (x1 - x0) / (H * W))
    output = model(x)
    loss = loss_fn(output, y_b[p], epoch) * lam + loss_fn(output, y_f, epoch) * (1.0 - lam)
    old = joint_normalized(self.kind, output.detach(), y_b[p], y_f, lam, epoch)
    self.log.append({"mixed": True, "lam": lam, "old_rel_diff": abs(old - loss.item())
                     / abs(loss.item()), "weighted": self.drw and epoch >= DRW_EPOCH})
    return loss


def make_run(name: str, ot_draw: float | None = None, **overrides) -> harness.LtjaxRun:
  kwargs = dict(overrides)
  if name in ("otmix_drw", "otmix_ldam"):
    kwargs["drw_epoch"] = DRW_EPOCH
  run = harness.LtjaxRun(methods.get_recipe(name, num_epochs=NUM_EPOCHS, **kwargs))
  if ot_draw is not None:  # what `begin_epoch` computes, fixed: F_hat and the epoch's u
    run.state = run.state.replace(method_state={
        "confusion": jnp.asarray(f_hat(), jnp.float32), "draw": jnp.float32(ot_draw)})
  return run


def model_for(name: str):
  return harness.TorchSmallCNN(head="normalized" if name == "otmix_ldam" else "linear")


def drw_schedule():
  """Two steps before the DRW epoch, three after."""
  return (harness.clean_schedule(2, seed=0, epoch=DRW_EPOCH - 1)
          + harness.clean_schedule(3, seed=1, epoch=DRW_EPOCH))


# ------------------------------------------------------------------------- tests

def test_f_hat_transcription_matches_ltjax_normalisation():
  """The code's F_hat (full rows normalised, then diagonal zeroed) is ltjax's too."""
  from ltjax import pairing
  np.testing.assert_allclose(np.asarray(pairing.normalized_confusion(CONFUSION_COUNTS)),
                             f_hat(), rtol=1e-6)
  np.testing.assert_allclose(f_hat().sum(axis=1), 1 - np.diag(CONFUSION_COUNTS)
                             / CONFUSION_COUNTS.sum(axis=1), rtol=1e-12)


def test_cmo_matches_reference_step():
  """CMO (naver-ai/cmo `train`): random pairs, CutMix, lam-weighted two-sided CE; the
  paper default mixes a batch with probability 0.5 (`mixup_prob`), so both kinds of step
  occur."""
  run = make_run("cmo")
  assert run.recipe.mix_prob == 0.5 and not run.recipe.ot
  ref = Reference()
  harness.replay(run, harness.TorchSmallCNN(), ref, harness.clean_schedule(5, seed=2, epoch=1))
  gates = [e["mixed"] for e in ref.log]
  assert any(gates) and not all(gates), f"mixed and unmixed steps needed: {gates}"


@pytest.mark.parametrize("ot_epoch", [True, False], ids=["ot_epoch", "random_epoch"])
def test_otmix_erm_matches_reference_step(ot_epoch):
  """OTmix + ERM, ltjax defaults (inference-mode OT features; no extra statistics update)."""
  draw = 0.0 if ot_epoch else 1.0
  run = make_run("otmix", ot_draw=draw)
  ref = Reference(ot_draw=draw)
  harness.replay(run, harness.TorchSmallCNN(), ref, harness.clean_schedule(4, seed=3, epoch=2))
  assert ref.uses_ot(2) == ot_epoch


def test_otmix_drw_matches_reference_per_term_weighted_means():
  """DRW: each side PyTorch's weighted mean over its own weight sum (the fixed defect)."""
  run = make_run("otmix_drw", ot_draw=0.0)
  ref = Reference(drw=True, ot_draw=0.0)
  harness.replay(run, harness.TorchSmallCNN(), ref, drw_schedule())
  weighted = [e["old_rel_diff"] for e in ref.log if e.get("weighted")]
  assert weighted and max(weighted) > 1e-3, (
      f"the joint normalisation must differ visibly from the code's loss: {weighted}")


def test_otmix_balms_matches_reference_step():
  """BALMS: `cross_entropy(z + log prior, y)` per side, no class weights."""
  run = make_run("otmix_balms", ot_draw=0.0)
  ref = Reference(kind="balanced_softmax", ot_draw=0.0)
  harness.replay(run, harness.TorchSmallCNN(), ref, harness.clean_schedule(4, seed=4, epoch=2))


def test_otmix_ldam_matches_reference_full_margin_per_side():
  """LDAM-DRW: each side its full margin and its own weighted mean; normalised head."""
  run = make_run("otmix_ldam", ot_draw=0.0)
  ref = Reference(kind="ldam", drw=True, ot_draw=0.0)
  harness.replay(run, model_for("otmix_ldam"), ref, drw_schedule())
  weighted = [e["old_rel_diff"] for e in ref.log if e.get("weighted")]
  assert weighted and max(weighted) > 1e-3, (
      f"the joint (soft-label) LDAM loss must differ visibly from the code's: {weighted}")


def test_cmo_mix_gate_unmixed_steps_train_on_the_clean_batch():
  """`mix_prob=0.5`, `mix_window`: closed window and r >= p steps are clean CE steps."""
  run = make_run("cmo", mix_prob=0.5, mix_window=WINDOW)
  ref = Reference(window=WINDOW)
  schedule = (harness.clean_schedule(2, seed=5, epoch=WINDOW[0])  # window closed
              + harness.clean_schedule(6, seed=6, epoch=WINDOW[0] + 1))
  harness.replay(run, harness.TorchSmallCNN(), ref, schedule)
  open_steps = [e["mixed"] for e in ref.log[2:]]
  assert not any(e["mixed"] for e in ref.log[:2])
  assert any(open_steps) and not all(open_steps), f"gate draws in the window: {open_steps}"


@pytest.mark.parametrize("features", ["train_unpooled", "train"])
def test_otmix_code_protocol_replays_the_code_model_passes(features):
  """The code protocol: class-balanced foreground (r=0), mix half the batches inside the
  window, code OT gate, OT features from training-mode passes (background, then
  foreground) that update the BatchNorm statistics; DRW reduction per side."""
  run = make_run("otmix_drw", ot_draw=0.0, r=0.0, mix_prob=0.5, mix_window=WINDOW,
                 ot_features=features, ot_gate="code")
  ref = Reference(drw=True, ot_draw=0.0, gate="code", features=features, window=WINDOW)
  schedule = (harness.clean_schedule(1, seed=7, epoch=WINDOW[0])  # window closed
              + harness.clean_schedule(5, seed=8, epoch=DRW_EPOCH))
  harness.replay(run, harness.TorchSmallCNN(), ref, schedule)
  gates = [e["mixed"] for e in ref.log[1:]]
  assert any(gates) and not all(gates), f"mixed and unmixed OT-epoch steps needed: {gates}"


def test_code_gate_epoch_zero_never_pairs_by_ot():
  """`binomial(1, p=(epoch / epochs) ** u)` (u = mu = 1) is 0 at epoch 0: random pairs even
  when the epoch's uniform draw is 0, which the paper gate ((e + 1) / T) would pair by OT."""
  run = make_run("otmix", ot_draw=0.0, ot_gate="code")
  ref = Reference(ot_draw=0.0, gate="code")
  assert not ref.uses_ot(0) and ref.uses_ot(1)
  harness.replay(run, harness.TorchSmallCNN(), ref, harness.clean_schedule(2, seed=9, epoch=0))


@pytest.mark.parametrize("name", ["otmix", "otmix_drw", "otmix_balms", "otmix_ldam", "cmo"])
def test_code_protocol_recipes_set_the_replayed_options(name):
  """`protocol="code"` sets what the code-protocol replays transcribe (240 / 200 epochs)."""
  recipe = methods.get_recipe(name, num_epochs=240, protocol="code")
  assert (recipe.r, recipe.mix_prob, recipe.mix_window) == (0.0, 0.5, (3, 3))
  if name == "cmo":
    assert not recipe.ot and recipe.alpha == 1.0  # naver-ai/cmo: np.random.beta(1, 1)
    return
  assert (recipe.ot_features, recipe.ot_gate, recipe.w, recipe.epsilon) == (
      "train_unpooled", "code", 0.05, 0.01)
  kind = {"otmix_balms": "balanced_softmax", "otmix_ldam": "ldam"}.get(name, "ce")
  drw = 160 if name in ("otmix_drw", "otmix_ldam") else None
  assert (recipe.criterion.kind, recipe.criterion.drw_epoch) == (kind, drw)
  assert recipe.criterion.reduction == "normalized" and recipe.criterion.label_form == "sides"
