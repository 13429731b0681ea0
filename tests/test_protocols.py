"""Tests for the protocol table (ltjax.methods.protocols) and the configs built from it.

EXPECTED below is written from the papers and SPEC, independently of protocols.py: per
dataset and protocol, each method's run length, milestones / factors, warm-up, DRW /
deferral / stage-2 epochs, alpha, CP-Mix gammas and DBN-Mix eta / eps.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from experiments import compare, runner
from ltjax import methods
from ltjax.methods import protocols, registry

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "configs")
DATASETS = ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "digits_lt", "imagenet_lt",
            "places_lt", "inat2018")
KINDS = ("paper", "code")
RECIPE_KEYS = ("drw_epoch", "defer_epoch", "stage2_epoch", "diversity_epoch", "alpha",
               "gamma_cp", "gamma_mix", "eta", "eps", "layers")
MANIFOLD_LAYERS = (0, 1, 2)  # Verma et al. 2019, sec. 5.1: the input and two stage outputs
MIXUP = ("mixup", "remix", "mamix", "smote_mix", "neighbor_mix")
OTMIX = ("otmix", "otmix_drw", "otmix_balms", "otmix_ldam", "otmix_saliency")
OTMIX_DRW = ("otmix_drw", "otmix_ldam")
# RIDE (Wang et al. 2021) and the combinations the seed papers report (OTmix Table 1: RIDE +
# CMO, RIDE + OTmix; CP-Mix Table 1: CP-Mix + RIDE).
RIDE = ("ride", "ride_ea", "ride_cmo", "otmix_ride", "cp_mix_ride")
RIDE_NESTEROV = ("ride", "ride_ea", "ride_cmo", "cp_mix_ride")  # RIDE's (CP-Mix B.3.1)


def config(dataset, arg):
  return compare.load_config_module(os.path.join(CONFIGS, f"{dataset}.py")).get_config(arg)


def row(epochs, milestones, factors, warmup, unit="epoch", finetune=(0, None), **recipe):
  return {"epochs": epochs, "milestones": tuple(milestones), "factors": tuple(factors),
          "warmup": warmup, "unit": unit, "finetune": finetune, "recipe": recipe}


def at(r, epochs):
  """`r` on an `epochs`-epoch run: epoch e of N becomes floor(epochs * e / N) (SPEC rule)."""
  scale = lambda e: epochs * e // r["epochs"]
  recipe = {k: scale(v) if k.endswith("_epoch") else v for k, v in r["recipe"].items()}
  ft_epochs, ft_lr = r["finetune"]
  return row(epochs, [scale(m) for m in r["milestones"]], r["factors"], scale(r["warmup"]),
             r["unit"], (max(1, scale(ft_epochs)) if ft_epochs else 0, ft_lr), **recipe)


def with_recipe(r, **recipe):
  return {**r, "recipe": {**r["recipe"], **recipe}}


def cifar(kind, eta=3.0, finetune_lr=0.1):
  """CIFAR-LT: LDAM-DRW / MAMix / LOBM / CMO 200 epochs, x0.01 at 160, x1e-4 at 180, 5-epoch
  warm-up; DBN-Mix sec. 4.2 (paper: x0.1 at 120, 160) or its code (x0.1 at 160, 180, warm-up
  per step); CP-Mix Table 6; OTmix sec. 5 (240 epochs, x0.1 / 0.01 / 1e-4 at 100 / 160 /
  200, DRW at 160 in its code)."""
  ldam = row(200, (160, 180), (0.01, 1e-4), 5)
  table = {"erm": ldam, "balanced_softmax": ldam, "drw": with_recipe(ldam, drw_epoch=160),
           "ldam_drw": with_recipe(ldam, drw_epoch=160), "cmo": with_recipe(ldam, alpha=1.0),
           "lobm": with_recipe(ldam, alpha=1.0),
           "lobm_star": with_recipe(ldam, alpha=1.0, defer_epoch=160),
           # LOBM Table 1's class-balanced sampling rows on LOBM's CIFAR recipe.
           "cb_sampling": ldam, "drs": with_recipe(ldam, defer_epoch=160),
           # LOBM sec. 4.2 / Table 1: its manifold-mixup baseline on the LOBM CIFAR recipe.
           "manifold_mixup": with_recipe(ldam, alpha=1.0, layers=MANIFOLD_LAYERS)}
  for name in MIXUP:
    table[name] = with_recipe(ldam, alpha=1.0)
    table[f"{name}_drw"] = with_recipe(ldam, alpha=1.0, drw_epoch=160)
  dbn = (row(200, (120, 160), (0.1, 0.01), 5) if kind == "paper"
         else row(200, (160, 180), (0.1, 0.01), 5, unit="step"))
  table["dbn_mix"] = table["sbn_mix"] = with_recipe(dbn, alpha=1.0, eta=eta, eps=0.6)
  table["cp_mix"] = row(300, (260, 280), (0.01, 1e-4), 10, finetune=(30, finetune_lr),
                        alpha=1.5, gamma_cp=2.5, gamma_mix=2.5, stage2_epoch=200)
  otmix = row(240, (100, 160, 200), (0.1, 0.01, 1e-4), 0, alpha=4.0)
  table.update({name: otmix for name in OTMIX})
  table.update({name: with_recipe(otmix, drw_epoch=160) for name in OTMIX_DRW})
  # RIDE's CIFAR config: LDAM-DRW, DRW and class temperatures from 160 of 200, RIDE's
  # LDAM-DRW schedule; + CMO's mixing; OTmix + RIDE on OTmix's stated CIFAR schedule (DRW at
  # 160 as otmix_ldam); CP-Mix + RIDE (CP-Mix B.3.1): RIDE's 200 epochs, stage 2 the last
  # third ("two over three of the whole training time is stage 1"), no fine-tuning.
  table["ride"] = with_recipe(ldam, drw_epoch=160, diversity_epoch=160)
  # + the routing stage: config_imbalance_cifar100_ride_ea.json, 5 epochs at lr 0.01.
  table["ride_ea"] = {**table["ride"], "finetune": (5, 0.01)}
  table["ride_cmo"] = with_recipe(ldam, alpha=1.0, drw_epoch=160, diversity_epoch=160)
  table["otmix_ride"] = with_recipe(otmix, drw_epoch=160, diversity_epoch=160)
  table["cp_mix_ride"] = with_recipe(ldam, alpha=1.5, gamma_cp=2.5, gamma_mix=2.5,
                                     stage2_epoch=133, diversity_epoch=160)
  return table


def large_ride(base, drw):
  """Places-LT states no RIDE protocol: the RIDE methods take the dataset's base recipe,
  with DRW from its last decay and the CIFAR protocol's diversity / stage-2 epochs (and
  the routing stage's 5 of 200 epochs) rescaled to the run."""
  n = base["epochs"]
  ride = with_recipe(base, drw_epoch=drw, diversity_epoch=n * 160 // 200)
  return {"ride": ride, "ride_ea": {**ride, "finetune": (max(1, n * 5 // 200), 0.01)},
          "ride_cmo": with_recipe(base, alpha=1.0, drw_epoch=drw,
                                  diversity_epoch=n * 160 // 200),
          "otmix_ride": with_recipe(base, alpha=4.0, drw_epoch=drw,
                                    diversity_epoch=n * 160 // 240),
          "cp_mix_ride": with_recipe(base, alpha=1.5, gamma_cp=2.5, gamma_mix=2.5,
                                     stage2_epoch=n * 133 // 200,
                                     diversity_epoch=n * 160 // 200)}


def large(kind, base, *, drw, alpha, dbn, lobm, defer, cp_mix, otmix=None, ride=None):
  """A large dataset: every method on `base` with DRW from its last decay and mixup alpha
  `alpha`, except where the papers give the method its own recipe."""
  table = {"erm": base, "balanced_softmax": base, "drw": with_recipe(base, drw_epoch=drw),
           "ldam_drw": with_recipe(base, drw_epoch=drw), "cmo": with_recipe(base, alpha=1.0)}
  for name in MIXUP:
    table[name] = with_recipe(base, alpha=alpha)
    table[f"{name}_drw"] = with_recipe(base, alpha=alpha, drw_epoch=drw)
  table["lobm"] = with_recipe(lobm, alpha=alpha)
  # The CIFAR-LT alpha: the large configs do not list manifold_mixup among their mixup
  # methods (LOBM sec. 4.2 states alpha=0.2 on ImageNet-LT for every mixup baseline).
  table["manifold_mixup"] = with_recipe(base, alpha=1.0, layers=MANIFOLD_LAYERS)
  table["lobm_star"] = with_recipe(lobm, alpha=alpha, defer_epoch=defer)
  table["cb_sampling"] = lobm
  table["drs"] = with_recipe(lobm, defer_epoch=defer)
  unit = "step" if kind == "code" else "epoch"
  table["dbn_mix"] = table["sbn_mix"] = with_recipe({**base, "unit": unit}, **dbn)
  table["cp_mix"] = cp_mix
  otmix = otmix or base
  if kind == "code" and otmix is not base:
    otmix = {**otmix, "warmup": 5}  # OTmix code, large datasets: 5-epoch warm-up
  table.update({name: with_recipe(otmix, alpha=4.0) for name in OTMIX})
  table.update({name: with_recipe(otmix, alpha=4.0, drw_epoch=drw) for name in OTMIX_DRW})
  table.update(large_ride(base, drw) if ride is None else ride)
  return table


def ride_resnet50():
  """RIDE's configs for ImageNet-LT and iNaturalist 2018 (config_*_resnet50_ride.json):
  100 epochs, 5-epoch warm-up, x0.1 at 60, x0.01 at 80, DRW and temperatures from 80; the
  routing stage 5 epochs at lr 0.01 (*_ride_ea.json); CP-Mix + RIDE's stage 2 at 2/3."""
  r = with_recipe(row(100, (60, 80), (0.1, 0.01), 5), diversity_epoch=80)
  ride = with_recipe(r, drw_epoch=80)
  return {"ride": ride, "ride_ea": {**ride, "finetune": (5, 0.01)},
          "ride_cmo": with_recipe(ride, alpha=1.0), "otmix_ride": with_recipe(ride, alpha=4.0),
          "cp_mix_ride": with_recipe(r, alpha=1.5, gamma_cp=2.5, gamma_mix=2.5,
                                     stage2_epoch=66)}


def expected(dataset, kind):
  if dataset == "cifar10_lt":
    return cifar(kind)
  if dataset == "cifar100_lt":  # DBN-Mix eta=7; CP-Mix fine-tuning lr 0.5 (B.3.1)
    return cifar(kind, eta=7.0, finetune_lr=0.5)
  if dataset in ("fashion_mnist_lt", "digits_lt"):  # CIFAR-LT protocols at 100 epochs
    return {name: at(r, 100) for name, r in cifar(kind).items()}
  if dataset == "imagenet_lt":  # DBN-Mix standard schedule; LOBM 4.2; CP-Mix B.3.2; OTmix 5
    return large(kind, row(90, (60, 80), (0.1, 0.01), 5), drw=80, alpha=0.2,
                 dbn={"alpha": 0.2, "eta": 9.0, "eps": 0.2},
                 lobm=row(90, (), (), 0), defer=60,
                 cp_mix=row(180, (), (), 0, finetune=(10, 0.5), alpha=3.0, gamma_cp=1.0,
                            gamma_mix=1.0, stage2_epoch=120),
                 otmix=row(200, (40, 80, 160), (0.1, 0.01, 1e-4), 0), ride=ride_resnet50())
  if dataset == "places_lt":  # CP-Mix B.3.3 for every method
    base = row(30, (5, 15), (0.1, 0.01), 0)
    return large(kind, base, drw=15, alpha=1.0, dbn={"alpha": 1.0, "eta": 3.0, "eps": 0.6},
                 lobm=base, defer=5,
                 cp_mix=with_recipe(base, alpha=1.0, gamma_cp=2.0, gamma_mix=2.0,
                                    stage2_epoch=15))
  if dataset == "inat2018":  # DBN-Mix 4.2 / 4.4; CP-Mix B.3.4; OTmix 5
    base = row(200, (120, 160), (0.1, 0.01), 5)
    return large(kind, base, drw=160, alpha=0.2,
                 dbn={"alpha": 0.2, "eta": 10.0, "eps": 0.02}, lobm=base, defer=120,
                 cp_mix=row(100, (60, 80), (0.1, 0.01), 10, finetune=(10, 3.0), alpha=1.0,
                            gamma_cp=1.0, gamma_mix=1.0, stage2_epoch=50),
                 otmix=row(210, (30, 80, 130, 180), (0.1, 0.01, 1e-3, 1e-4), 0),
                 ride=ride_resnet50())
  raise KeyError(dataset)


def nested(rcp, key):
  """Where a recipe keeps hyperparameter `key`: its Criterion (DRW), RIDE group or itself."""
  group = {"drw_epoch": "criterion", "diversity_epoch": "ride"}.get(key)
  return getattr(rcp, group) if group else rcp


def observed(cfg):
  ft = cfg.finetune
  return row(cfg.num_epochs, cfg.schedule.milestones, cfg.schedule.factors,
             cfg.schedule.warmup_epochs, cfg.schedule.warmup_unit,
             (ft.num_epochs, ft.lr if ft.num_epochs else None),
             **{k: cfg.recipe[k] for k in RECIPE_KEYS if cfg.recipe.get(k) is not None})


# ------------------------------------------------------------------- the protocol table

def test_every_method_has_both_protocols_with_sources():
  assert set(protocols.PROTOCOLS) == set(methods.METHODS)
  for name in methods.METHODS:
    for kind in KINDS:
      p = methods.get_protocol(name, kind)
      assert p["source"] and p["reproduces"], (name, kind)
      assert {"num_epochs", "batch_size", "drop_last", "model", "optim", "schedule",
              "augment", "normalize", "recipe", "finetune"} <= set(p), (name, kind)
  with pytest.raises(ValueError, match="valid protocols: paper, code"):
    methods.get_protocol("erm", "folklore")
  with pytest.raises(ValueError, match="valid methods: erm"):
    methods.get_protocol("bogus")


def test_a_method_without_a_protocol_fails_loudly(monkeypatch):
  monkeypatch.setattr(protocols, "PROTOCOLS",
                      {k: v for k, v in protocols.PROTOCOLS.items() if k != "otmix_ldam"})
  with pytest.raises(ImportError, match=r"without a protocol \['otmix_ldam'\]"):
    registry._check_protocols()


@pytest.mark.parametrize("name", methods.METHODS)
def test_registry_defaults_are_the_published_cifar_recipe(name):
  """At the paper's run length and rescaled to 100 epochs (EXPECTED, not protocols.py)."""
  published = expected("cifar10_lt", "paper")[name]
  for epochs in (published["epochs"], 100):
    rcp = methods.get_recipe(name, num_epochs=epochs)
    for key, value in at(published, epochs)["recipe"].items():
      target = nested(rcp, key)
      assert getattr(target, key) == value, (name, epochs, key)


def test_epochs_are_rescaled_once():
  assert methods.get_recipe("mixup_drw", num_epochs=100).criterion.drw_epoch == 80
  assert methods.get_recipe("otmix_ldam", num_epochs=120).criterion.drw_epoch == 80
  assert methods.get_recipe("cp_mix", num_epochs=150).stage2_epoch == 100
  cfg = config("cifar10_lt", "method=otmix_ldam,epochs=120")
  assert cfg.recipe.drw_epoch == 80 and tuple(cfg.schedule.milestones) == (50, 80, 100)
  # build_recipe takes the config's epoch 80 of 120 as is (not 80 of 240 -> 40).
  assert runner.build_recipe(cfg).criterion.drw_epoch == 80
  mix = config("cifar10_lt", "method=mixup_drw,epochs=100")
  assert mix.recipe.drw_epoch == 80 and runner.build_recipe(mix).criterion.drw_epoch == 80


def test_otmix_ldam_trains_on_the_otmix_schedule():
  """Before the protocol table, otmix_ldam got the 200-epoch CIFAR protocol, DRW at 133."""
  cfg = config("cifar10_lt", "method=otmix_ldam")
  assert cfg.num_epochs == 240 and tuple(cfg.schedule.milestones) == (100, 160, 200)
  assert tuple(cfg.schedule.factors) == (0.1, 0.01, 1e-4) and cfg.schedule.warmup_epochs == 0
  assert cfg.recipe.drw_epoch == 160
  rcp = runner.build_recipe(cfg)
  assert (rcp.criterion.kind, rcp.criterion.drw_epoch, rcp.head) == ("ldam", 160, "normalized")


# --------------------------------------------------------------------- per-dataset tables

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_configs_follow_the_published_protocols(dataset, kind):
  table = expected(dataset, kind)
  assert set(table) == set(methods.METHODS)
  for name in methods.METHODS:
    cfg = config(dataset, f"method={name},protocol={kind}")
    assert (cfg.method, cfg.protocol) == (name, kind)
    assert cfg.reproduces and cfg.source
    assert observed(cfg) == table[name], (dataset, kind, name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_config_builds_its_recipe(dataset, kind):
  for name in methods.METHODS:
    cfg = config(dataset, f"method={name},protocol={kind}")
    runner.validate_names(cfg)
    rcp = runner.build_recipe(cfg)
    assert rcp.name == name
    for key in RECIPE_KEYS:
      if cfg.recipe.get(key) is not None:
        target = nested(rcp, key)
        assert getattr(target, key) == cfg.recipe[key], (dataset, kind, name, key)


@pytest.mark.parametrize("kind", KINDS)
def test_cifar_configs_pass_the_model_checks(kind):
  for name in methods.METHODS:
    runner.check_setup(config("cifar10_lt", f"method={name},protocol={kind}"), 10,
                       (32, 32, 3))


# ------------------------------------------------------------------ code-protocol options

def test_code_protocol_options():
  """What the authors' code does differently (SPEC section 7, read from each repository)."""
  dbn = config("cifar10_lt", "method=dbn_mix,protocol=code")
  assert (dbn.recipe.temperature, dbn.recipe.loss_form, dbn.recipe.trunk) == (
      "code", "binary", "separate")
  assert dbn.optim.nesterov and not dbn.drop_last and dbn.augment.pad_mode == "reflect"
  assert dbn.normalize == "cifar_stats"
  sbn = config("cifar100_lt", "method=sbn_mix,protocol=code")
  assert "trunk" not in sbn.recipe and sbn.recipe.clean_pass
  assert (sbn.recipe.temperature, sbn.recipe.loss_form) == ("code", "binary")
  for name in OTMIX:
    ot = config("cifar10_lt", f"method={name},protocol=code")
    assert (ot.recipe.r, ot.recipe.mix_prob, tuple(ot.recipe.mix_window),
            ot.recipe.ot_features, ot.recipe.ot_gate) == (0.0, 0.5, (3, 3), "train_unpooled",
                                                          "code")
    assert not ot.drop_last and ot.schedule.warmup_epochs == 0
    for dataset in ("imagenet_lt", "inat2018"):  # imagenet_train.py / iNat18_train.py
      assert config(dataset, f"method={name},protocol=code").recipe.ot_features == "train"
  cmo = config("cifar10_lt", "method=cmo,protocol=code")
  assert (cmo.recipe.r, cmo.recipe.mix_prob, tuple(cmo.recipe.mix_window)) == (0.0, 0.5, (3, 3))
  for name in ("mixup", "mixup_drw", "remix_drw", "mamix_drw"):
    mix = config("cifar10_lt", f"method={name},protocol=code")
    assert (mix.recipe.clean_pass, mix.recipe.head, mix.drop_last) == (
        True, "linear_nobias", False)
  for name in ("drw", "ldam_drw"):
    assert not config("cifar10_lt", f"method={name},protocol=code").drop_last
  for name in ("lobm_star", "cp_mix"):  # no public code: code == paper
    assert methods.get_protocol(name, "code") == {
        **methods.get_protocol(name, "paper"), "source": protocols._NO_CODE}


def test_paper_protocol_options():
  for name in methods.METHODS:
    cfg = config("cifar10_lt", f"method={name}")
    assert cfg.drop_last and cfg.augment.pad_mode == "constant" and cfg.normalize == "cifar"
    assert cfg.schedule.warmup_unit == "epoch"
    assert cfg.optim.nesterov == (name in RIDE_NESTEROV), name
  assert config("cifar10_lt", "method=otmix").recipe.r == 1.0
  assert config("cifar10_lt", "method=cmo").recipe.mix_prob == 0.5
  reductions = {name: config("cifar10_lt", f"method={name}").recipe.get("reduction")
                for name in ("drw", "ldam_drw", "mixup_drw", "otmix_drw")}
  assert reductions == {"drw": "normalized", "ldam_drw": "normalized", "mixup_drw": "mean",
                        "otmix_drw": "normalized"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dataset", ("cifar10_lt", "cifar100_lt"))
def test_ride_methods_train_the_ride_network_on_its_optimiser(dataset, kind):
  """RIDE's CIFAR config (configs/config_imbalance_cifar100_ride.json): 3 experts, reduced
  widths, normalised head, LDAM-DRW, SGD Nesterov wd 5e-4; CP-Mix + RIDE: six experts, the
  normed layer (s = 30), no fine-tuning (CP-Mix B.3); OTmix + RIDE: OTmix's optimiser."""
  for name in RIDE:
    cfg = config(dataset, f"method={name},protocol={kind}")
    rcp = runner.build_recipe(cfg)
    assert cfg.model.name == "ride_resnet32", name
    assert cfg.model.get("num_experts", 3) == (6 if name == "cp_mix_ride" else 3), name
    assert rcp.requirements().experts and rcp.ride.multi_expert and rcp.head == "normalized"
    assert (rcp.ride.diversity_factor, rcp.ride.diversity_temperature,
            rcp.ride.diversity_reweight, rcp.ride.base_loss_factor) == (-0.2, 1.0, 0.05, 1.0)
    assert cfg.optim.weight_decay == (2e-4 if name == "otmix_ride" else 5e-4), name
    assert cfg.optim.nesterov == (name in RIDE_NESTEROV), name
    assert cfg.optim.momentum == 0.9
    if name == "ride_ea":  # the routing stage (config_imbalance_cifar100_ride_ea.json)
      ft = cfg.finetune
      assert (ft.num_epochs, ft.batch_size, ft.lr, ft.weight_decay, ft.nesterov,
              ft.schedule) == (5, 512, 0.01, 5e-4, True, "cosine_epoch")
      assert (cfg.model.routers, cfg.model.top_choices, rcp.ride.route_pos_weight) == (
          True, 30, 100.0)
    else:
      assert cfg.finetune.num_epochs == 0 and not cfg.model.get("routers", False)
    if name == "cp_mix_ride":
      assert (rcp.logit_scale, cfg.drop_last) == (30.0, True)
    else:
      assert (rcp.criterion.kind, rcp.criterion.scale) == ("ldam", 30.0)
      assert cfg.drop_last == (kind == "paper"), name  # RIDE's DataLoader: no drop_last
  ot = config("cifar10_lt", "method=otmix_ride,protocol=code")
  assert (ot.recipe.r, ot.recipe.mix_prob, ot.recipe.ot_gate) == (0.0, 0.5, "code")
  cmo = config("cifar10_lt", "method=ride_cmo,protocol=code")
  assert (cmo.recipe.r, tuple(cmo.recipe.mix_window)) == (0.0, (3, 3))


@pytest.mark.parametrize("dataset,reweight,batch,lr", [
    ("imagenet_lt", 0.02, 256, 0.1), ("inat2018", 0.015, 512, 0.2)])
def test_large_ride_configs_follow_ride_s_resnet50_configs(dataset, reweight, batch, lr):
  """config_imagenet_lt_resnet50_ride(_ea).json, config_iNaturalist_resnet50_ride(_ea).json:
  ResNet-50 experts, Nesterov, wd 2e-4, the dataset's reweight factor; routers k = 50."""
  for name in RIDE:
    cfg = config(dataset, f"method={name}")
    rcp = runner.build_recipe(cfg)
    assert runner.model_name(cfg, rcp) == "ride_resnet50", name
    assert (cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.nesterov) == (
        batch, lr, 2e-4, True), name
    assert rcp.ride.diversity_reweight == reweight, name
  ea = config(dataset, "method=ride_ea")
  assert (ea.model.top_choices, ea.finetune.num_epochs, ea.finetune.batch_size) == (50, 5, 512)


def test_inat_cp_mix_scales_its_cosine_classifier():
  cfg = config("inat2018", "method=cp_mix")
  assert cfg.recipe.head == "normalized" and cfg.recipe.logit_scale == 30.0
  main, finetune = runner.build_phases(cfg, runner.build_recipe(cfg), 437513)
  assert main.recipe.logit_scale == 30.0 and finetune.recipe.logit_scale == 30.0


# ----------------------------------------------------------------- the runner's settings

def test_schedule_counts_the_last_partial_batch(monkeypatch):
  """drop_last=False: ceil(N / B) steps per epoch, 97 on CIFAR-10-LT-100 (SPEC section 7)."""
  seen = []
  monkeypatch.setattr(runner, "lr_schedule",
                      lambda cfg, steps: seen.append(steps) or (lambda step: 0.1))
  for kind in KINDS:
    cfg = config("cifar10_lt", f"method=dbn_mix,protocol={kind}")
    runner.build_phases(cfg, runner.build_recipe(cfg), 12406)
  assert seen == [96, 97]


def test_dbn_code_warms_up_per_step_from_zero():
  cfg = config("cifar10_lt", "method=dbn_mix,protocol=code")
  schedule = runner.lr_schedule(cfg, 97)
  assert float(schedule(0)) == 0.0 and float(schedule(97)) < 0.1 * 2 / 5
  assert float(schedule(5 * 97)) == pytest.approx(0.1)
  assert float(schedule(160 * 97)) == pytest.approx(0.01)
  paper = runner.lr_schedule(config("cifar10_lt", "method=dbn_mix"), 96)
  assert float(paper(0)) == pytest.approx(0.02) and float(paper(120 * 96)) == pytest.approx(0.01)


def test_cifar_stats_normalisation():
  images = np.zeros((2, 32, 32, 3), np.uint8)
  _, norm = runner.normalizer(config("cifar100_lt", "method=dbn_mix,protocol=code"), images)
  assert norm == {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}
  _, norm = runner.normalizer(config("cifar10_lt", "method=dbn_mix"), images)
  assert norm["std"] == [0.2023, 0.1994, 0.2010]


def test_protocol_is_recorded():
  cfg = config("cifar10_lt", "method=dbn_mix,protocol=code")
  info = runner.protocol_info(cfg)
  assert info["name"] == "code" and "DBN-Mix Table 1" in info["reproduces"]
  assert "soony1213/DBN-Mix" in info["source"]
  paper = runner.protocol_info(config("cifar10_lt", "method=dbn_mix"))
  assert paper["name"] == "paper" and "protocol=code" in paper["reproduces"]
  with pytest.raises(ValueError, match="valid protocols: paper, code"):
    config("cifar10_lt", "method=erm,protocol=folklore")


# ----------------------------------------------------------------- every field on the command line

def test_every_recipe_hyperparameter_is_in_the_config():
  for name in methods.METHODS:
    cfg = config("cifar10_lt", f"method={name}")
    rcp = runner.build_recipe(cfg)
    assert set(cfg.recipe) == set(methods.hyperparameters(rcp)), name
    for field, (value, _) in methods.hyperparameters(rcp).items():
      assert cfg.recipe[field] == value or (value is None and cfg.recipe[field] is None), field


def test_recipe_fields_are_set_by_flags_including_none_ones():
  """ltjax 0.1's joint normalisation of mixup-DRW stays a config flag away; None fields
  (CP-Mix's B', OTmix's mix_window) are typed placeholders that flags can set."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  def parse(arg, *argv):  # as experiments.train parses its command line
    argv = ["prog", f"--config={os.path.join(CONFIGS, 'cifar10_lt.py')}:{arg}", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    values(argv)
    return runner.build_recipe(values.config)

  mixup = parse("method=mixup_drw", "--config.recipe.label_form=soft",
                "--config.recipe.reduction=normalized")
  assert (mixup.criterion.label_form, mixup.criterion.reduction) == ("soft", "normalized")
  assert parse("method=cp_mix", "--config.recipe.cp_batch_size=32").cp_batch_size == 32
  otmix = parse("method=otmix", "--config.recipe.mix_window=(3, 3)",
                "--config.recipe.mix_prob=0.5")
  assert (tuple(otmix.mix_window), otmix.mix_prob) == ((3, 3), 0.5)
