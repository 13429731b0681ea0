"""RIDE's expert-assignment (routing) stage (Wang et al. 2021, sec. 3.3).

The reference is a PyTorch transcription of `ResNet_s` in
model/ldam_drw_resnets/ea_resnet_cifar.py (frank-xwang/RIDE-LongTailRecognition): its
routers (`pred_expert_help`), the routing loss of its training branch and the early-exit
prediction of its test branch. Weights go from ltjax to the reference. Then the phases:
the experts' phase leaves the routers as initialised, the routing phase moves only them
(at its own batch size, in memory and streamed), evaluation reads the routed prediction,
and the extra phase's per-epoch cosine follows `torch.optim.lr_scheduler.CosineAnnealingLR`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from ltjax import augment, methods, models, recipe
from ltjax.methods import ride
from ltjax.training import optim, trainer
from test_ride import TorchRIDE, _t, copy_into_torch

K, EXPERTS, TOP = 12, 3, 5


class TorchRIDEEA(TorchRIDE):
  """ea_resnet_cifar.ResNet_s: RIDE's CIFAR network with its expert-assignment routers."""

  def __init__(self, num_classes, num_experts, top_choices, pos_weight):
    super().__init__(num_classes, num_experts, reduce_dimension=True, use_norm=True)
    self.expert_help_pred_hidden_fcs = tnn.ModuleList(
        [tnn.Linear(48, 16) for _ in range(num_experts - 1)])
    self.expert_help_pred_fc = tnn.Linear(16 + top_choices, 1)
    self.num_experts, self.num_classes = num_experts, num_classes
    self.top_choices_num, self.pos_weight = top_choices, pos_weight

  def _separate_part(self, x, ind):
    out = self.layer3s[ind](self.layer2s[ind](x))
    self.feat = out
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return self.linears[ind](out) * self.s

  def pred_expert_help(self, input_part, i):
    feature, logits = input_part
    feature = F.adaptive_avg_pool2d(feature, (1, 1)).flatten(1)
    feature = feature / feature.norm(dim=1, keepdim=True)
    feature = F.relu(self.expert_help_pred_hidden_fcs[i](feature))
    topk, _ = torch.topk(logits, k=self.top_choices_num, dim=1)
    return self.expert_help_pred_fc(torch.cat((topk, feature), dim=1))

  def forward(self, x, target=None):
    shared_part = self.layer1(F.relu(self.bn1(self.conv1(x))))
    if target is not None:
      output = shared_part.new_zeros((shared_part.size(0), self.num_classes))
      preds = output.new_zeros((output.size(0), self.num_experts - 1))
      correctness = output.new_zeros((output.size(0), self.num_experts), dtype=torch.bool)
      loss = output.new_zeros((1,))
      for i in range(self.num_experts):
        output += self._separate_part(shared_part, i)
        correctness[:, i] = output.argmax(dim=1) == target
        if i != self.num_experts - 1:
          preds[:, i] = self.pred_expert_help((self.feat, output / (i + 1)), i).view((-1,))
      for i in range(self.num_experts - 1):
        helps = (~correctness[:, i]) & correctness[:, i + 1:].any(dim=1)
        loss += F.binary_cross_entropy_with_logits(
            preds[:, i], helps.float(), pos_weight=preds.new_tensor([self.pos_weight]))
      return output / self.num_experts, loss / (self.num_experts - 1), preds
    expert_next = shared_part.new_ones((shared_part.size(0),), dtype=torch.bool)
    used = shared_part.new_ones((shared_part.size(0), 1), dtype=torch.long)
    output = self._separate_part(shared_part, 0)
    for i in range(1, self.num_experts):
      pred = self.pred_expert_help((self.feat, output[expert_next] / i), i - 1).view((-1,))
      expert_next[expert_next.clone()] = torch.sigmoid(pred) > 0.5
      if not expert_next.any():
        break
      output[expert_next] += self._separate_part(shared_part[expert_next], i)
      used[expert_next] += 1
    return output / used, used


def copy_routers(net, router):
  for j, fc in enumerate(net.expert_help_pred_hidden_fcs):
    fc.weight.data = _t(np.asarray(router[f"hidden{j}"]["kernel"]).T)
    fc.bias.data = _t(router[f"hidden{j}"]["bias"])
  net.expert_help_pred_fc.weight.data = _t(np.asarray(router["predict"]["kernel"]).T)
  net.expert_help_pred_fc.bias.data = _t(router["predict"]["bias"])


def routed_setup():
  """A routed RIDE ResNet-32, its variables (router 0 split near its median) and a batch."""
  model = models.get_model("ride_resnet32", K, head="normalized", num_experts=EXPERTS,
                           routers=True, top_choices=TOP)
  # A colour per image plus noise: white noise gives an untrained ResNet-32 the same
  # pooled-feature direction for every image (the same argmax everywhere).
  rng = np.random.default_rng(0)
  x = (2 * rng.normal(size=(16, 1, 1, 3)) + 0.3 * rng.normal(size=(16, 32, 32, 3))
       ).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(x), train=False)
  r0 = np.asarray(model.apply(variables, jnp.asarray(x), train=False)["router_logits"][0])
  params = jax.tree.map(np.asarray, variables["params"])
  params["router"]["predict"]["bias"] = params["router"]["predict"]["bias"] - np.median(r0)
  variables = {**variables, "params": params}
  net = TorchRIDEEA(K, EXPERTS, TOP, pos_weight=100.0)
  copy_into_torch(net, variables, use_norm=True)
  copy_routers(net, variables["params"]["router"])
  net.eval()  # the routing stage: every BatchNorm frozen (`_hook_before_iter`)
  return model, variables, net, x


def test_routers_and_routing_loss_match_the_reference():
  model, variables, net, x = routed_setup()
  out = model.apply(variables, jnp.asarray(x), train=False)
  xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)))
  with torch.no_grad():
    experts = torch.stack([net._separate_part(net.layer1(F.relu(net.bn1(net.conv1(xt)))), e)
                           for e in range(EXPERTS)])
  # Labels that make every target pattern occur: the first expert right, only the mean of
  # two right, only the mean of three right, none right.
  first, two = experts[0].argmax(1), experts[:2].sum(0).argmax(1)
  three = experts.sum(0).argmax(1)
  labels = torch.where(torch.arange(16) % 4 == 0, first,
                       torch.where(torch.arange(16) % 4 == 1, two,
                                   torch.where(torch.arange(16) % 4 == 2, three,
                                               (three + 1) % K)))
  with torch.no_grad():
    mean, want_loss, want_routers = net(xt, target=labels)
  np.testing.assert_allclose(net.s * np.asarray(out["logits"]), mean.numpy(), rtol=2e-4,
                             atol=2e-4)
  np.testing.assert_allclose(out["router_logits"], want_routers.numpy().T, rtol=1e-4,
                             atol=1e-4)
  got = ride.routing_loss(out["expert_logits"], out["router_logits"], labels.numpy(), 100.0)
  np.testing.assert_allclose(got, want_loss.item(), rtol=1e-4)
  targets = np.asarray(ride.routing_targets(out["expert_logits"], labels.numpy()))
  assert targets.any() and not targets.all()


def test_routed_prediction_matches_the_reference_early_exit():
  model, variables, net, x = routed_setup()
  out = model.apply(variables, jnp.asarray(x), train=False)
  with torch.no_grad():
    want, used = net(torch.tensor(np.transpose(x, (0, 3, 1, 2))))
  np.testing.assert_array_equal(out["experts_used"], used.numpy()[:, 0])
  assert len(set(used.numpy()[:, 0].tolist())) > 1  # the routers split the batch
  np.testing.assert_allclose(net.s * np.asarray(out["routed_logits"]), want.numpy(),
                             rtol=2e-4, atol=2e-4)


def test_routers_need_two_experts_and_the_routing_phase_needs_routers():
  with pytest.raises(ValueError, match="num_experts must be >= 2"):
    models.ride_resnet32(K, num_experts=1, routers=True)
  follow_up, = methods.get_recipe("ride_ea", num_epochs=4).requirements().extra_phases
  x = np.zeros((1, 16, 16, 1), np.float32)
  with pytest.raises(ValueError, match="routers=True"):
    methods.check_compatible(follow_up, models.ride_small_cnn(K, head="normalized"), x)
  methods.check_compatible(follow_up, models.ride_small_cnn(K, head="normalized",
                                                            routers=True), x)


# ------------------------------------------------------------------------------ the phases

COUNTS = (40, 24, 16, 8)
N, B, ROUTE_B = sum(COUNTS), 16, 24
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS).astype(np.int32)
IMAGES = np.random.default_rng(3).integers(0, 256, (N, 8, 8, 1), dtype=np.uint8)
NORMALIZE = augment.Normalize.of((0.5,), (0.25,))


def fit_phases(data, routing_epochs):
  rcp = methods.get_recipe("ride_ea", num_epochs=2)
  model = models.ride_small_cnn(len(COUNTS), head=rcp.head, widths=(4, 8), routers=True)
  follow_up, = rcp.requirements().extra_phases
  needs = follow_up.requirements()
  phases = [trainer.Phase(rcp, 2, optim.sgd(0.05, momentum=0.9, weight_decay=5e-4,
                                            trainable=optim.phase_mask(None, ("router",))))]
  if routing_epochs:
    phases.append(trainer.Phase(
        follow_up, routing_epochs,
        optim.sgd(0.5, momentum=0.9, weight_decay=5e-4,
                  trainable=optim.phase_mask(needs.trainable, needs.frozen)),
        train_batch_stats=needs.train_batch_stats, batch_size=ROUTE_B))
  result = trainer.fit(model, phases, data, batch_size=B, seed=0, normalize_fn=NORMALIZE,
                       test_images=IMAGES, test_labels=LABELS, progress=False, loop="steps")
  return model, result


def split(params):
  return params["router"], {k: v for k, v in params.items() if k != "router"}


def test_the_experts_phase_freezes_the_routers_and_the_routing_phase_moves_only_them():
  data = recipe.DeviceDataset.from_arrays(IMAGES, LABELS, len(COUNTS))
  model, experts_only = fit_phases(data, 0)
  init = model.init(trainer.run_keys(0).init, NORMALIZE(IMAGES[:1]), train=False)
  router0, rest0 = split(init["params"])
  router1, rest1 = split(experts_only.state.params)
  # Untouched (weight decay alone would move them by 12 * 0.05 * 5e-4 = 3e-4 relative; the
  # 1e-6 allows for the initialiser's last bit, traced inside fit's jit here).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), router0, router1)
  assert not np.allclose(rest0["expert0"]["head"]["kernel"], rest1["expert0"]["head"]["kernel"])
  _, routed = fit_phases(data, 2)
  router2, rest2 = split(routed.state.params)
  jax.tree.map(np.testing.assert_array_equal, rest1, rest2)
  jax.tree.map(np.testing.assert_array_equal, experts_only.state.batch_stats,
               routed.state.batch_stats)
  assert not np.allclose(router1["predict"]["kernel"], router2["predict"]["kernel"])
  assert int(routed.state.step) == 2 * (N // B) + 2 * (N // ROUTE_B)
  # The routing phase evaluates the routed prediction.
  out = model.apply({"params": routed.state.params, "batch_stats": routed.state.batch_stats},
                    NORMALIZE(IMAGES), train=False)
  top1 = np.mean(np.argmax(np.asarray(out["routed_logits"]), -1) == LABELS)
  np.testing.assert_allclose(routed.final_metrics["top1"], top1, atol=1e-6)
  assert np.isfinite(routed.train_metrics["loss"])


def test_the_routing_phase_batch_size_holds_on_the_streamed_path():
  pytest.importorskip("grain")
  from ltjax.data import pipeline, stream
  data = stream.StreamedDataset(pipeline.ArraySource(IMAGES, LABELS), LABELS, len(COUNTS),
                                read_threads=1)
  _, routed = fit_phases(data, 1)
  assert int(routed.state.step) == 2 * (N // B) + N // ROUTE_B


def test_cosine_epoch_follows_torch_cosine_annealing():
  """RIDE's EA configs: CosineAnnealingLR(T_max=5, eta_min=0) stepped once per epoch."""
  from experiments import runner
  ft = ml_collections.ConfigDict({"num_epochs": 5, "lr": 0.01, "schedule": "cosine_epoch"})
  steps = 7
  schedule = runner.finetune_schedule(ft, steps)
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=0.01)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.0)
  for epoch in range(5):
    want = opt.param_groups[0]["lr"]
    for s in range(steps):
      np.testing.assert_allclose(schedule(jnp.int32(epoch * steps + s)), want, rtol=1e-6)
    opt.step()
    sched.step()
  ft.schedule = "cosine"
  with pytest.raises(runner.UserError, match="cosine_epoch"):
    runner.finetune_schedule(ft, steps)


def digits_config(arg):
  import pathlib
  from experiments import compare
  path = pathlib.Path(__file__).resolve().parents[1] / "experiments/configs/digits_lt.py"
  return compare.load_config_module(str(path)).get_config(arg)


def test_runner_phases_freeze_the_routers_then_train_only_them():
  """build_phases: the experts' optimiser leaves the routers alone even under weight decay;
  the routing phase's optimiser updates only them, at config.finetune.batch_size."""
  from experiments import runner
  cfg = digits_config("method=ride_ea,epochs=10")
  with cfg.unlocked():
    cfg.finetune.batch_size = 64
  rcp = runner.build_recipe(cfg)
  main, routing = runner.build_phases(cfg, rcp, 300)
  assert isinstance(routing.recipe, ride.RIDERouting) and routing.batch_size == 64
  assert (routing.recipe.pos_weight, routing.train_batch_stats) == (100.0, False)
  model = runner.build_model(cfg, rcp, 10)
  assert cfg.model.routers and model.routers
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)["params"]
  grads = jax.tree.map(jnp.ones_like, params)
  for phase, moved in ((main, False), (routing, True)):
    updates, _ = phase.tx.update(grads, phase.tx.init(params), params)
    router, rest = split(updates)
    assert all(bool(jnp.any(u != 0)) == moved for u in jax.tree.leaves(router))
    assert all(bool(jnp.any(u != 0)) != moved for u in jax.tree.leaves(rest))


def test_ride_ea_trains_through_experiments(tmp_path):
  from experiments import runner
  cfg = digits_config("method=ride_ea,quick")
  with cfg.unlocked():
    cfg.progress = False
    cfg.num_epochs, cfg.finetune.num_epochs = 2, 1
  import json
  from ltjax import reporting
  results = runner.run(cfg, str(tmp_path / "run"), log=lambda _: None)
  recorded = json.loads((tmp_path / "run" / "config.json").read_text())
  assert recorded["model"]["name"] == "ride_small_cnn" and recorded["model"]["routers"]
  rows = reporting.read_metrics(str(tmp_path / "run"))
  assert [r["epoch"] for r in rows] == [0, 1, 2] and "train/experts_used" in rows[-1]
  assert 1.0 <= rows[-1]["train/experts_used"] <= 2.0  # ride_small_cnn: two experts
  assert np.isfinite(rows[-1]["train/loss"]) and results["final"]["top1"] is not None
