"""Each method's CIFAR-LT training protocol: as its paper states it, as its authors' code trains it.

`get_protocol(name, kind)` is the one home of a method's training recipe: `kind="paper"`
follows the paper's text, `kind="code"` the authors' public code, which produced the
published tables (SPEC section 7). `ltjax.methods.get_recipe` takes its hyperparameter
defaults from the paper protocol and the experiment configs (`experiments/configs`) build
their runs from either; `rescale` is the one place where a protocol is moved to another run
length.

A protocol is a nested dict in the layout of an experiment config:

| key         | content                                                                   |
|-------------|---------------------------------------------------------------------------|
| num_epochs  | run length (epochs of the main phase)                                     |
| batch_size  | B                                                                         |
| drop_last   | drop the last partial batch of an epoch (False: ceil(N / B) steps)        |
| model       | {"name"}: the backbone (two-branch methods get its dual form)             |
| optim       | SGD: {"lr", "momentum", "nesterov", "weight_decay"}                       |
| schedule    | {"name", "warmup_epochs", "warmup_unit", "milestones", "factors"}: linear |
|             | warm-up stepped per "epoch" or per "step"; cumulative factors from each   |
|             | 0-based milestone epoch on                                                |
| augment     | {"pad", "flip", "pad_mode"}: random crop of the padded image, flip        |
| normalize   | "cifar" (mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)) or  |
|             | "cifar_stats" (the full CIFAR training set's own mean / std)              |
| recipe      | `get_recipe` hyperparameters (recipe, criterion and RIDE fields);         |
|             | epoch-valued ones (drw_epoch, defer_epoch, stage2_epoch, diversity_epoch) |
|             | in epochs of this run                                                     |
| finetune    | the extra phases (CP-Mix's classifier fine-tuning, RIDE's routing stage): |
|             | {"num_epochs" (0: none), "lr", "momentum", "weight_decay", "nesterov",    |
|             | "schedule" ("constant" / "cosine_epoch"), "batch_size" (0: the run's)}    |
| reproduces  | the published table this protocol reproduces (or why it reproduces none)  |
| source      | paper section / table, or repository and files of the authors' code      |

Epochs are 0-based: a milestone 160 drops the rate from the first step of epoch 160, which
is what the references' `if epoch > 160` on a 1-based counter does. Where a paper is silent
its reference's setting is used and the entry's `source` says so; methods without public
code (LOBM, CP-Mix) have `code == paper`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

Protocol = dict[str, Any]

KINDS = ("paper", "code")

# Paths of the epoch-valued fields that `rescale` moves with the run length.
EPOCH_FIELDS = ("schedule.warmup_epochs", "schedule.milestones", "recipe.drw_epoch",
                "recipe.defer_epoch", "recipe.stage2_epoch", "recipe.diversity_epoch")


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
  """Deep merge: nested dicts are merged key by key, other values replaced (copies)."""
  out = copy.deepcopy(dict(base))
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = merge(out[key], value)
    else:
      out[key] = copy.deepcopy(value)
  return out


def _scale(value: Any, num_epochs: int, of: int) -> Any:
  if isinstance(value, (tuple, list)):
    return tuple(_scale(v, num_epochs, of) for v in value)
  return num_epochs * int(value) // of


def rescale(protocol: Mapping[str, Any], num_epochs: int) -> Protocol:
  """`protocol` moved from its `num_epochs` to `num_epochs` epochs.

  Epoch e of an N-epoch protocol becomes floor(num_epochs * e / N) in every field of
  EPOCH_FIELDS (DRW from 160 of 200 is epoch 80 of a 100-epoch run). Milestones that
  collide after rounding keep the last factor; a fine-tuning phase is rescaled too but
  keeps at least one epoch.

  Raises:
    ValueError: num_epochs < 1.
  """
  if num_epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {num_epochs}.")
  of = int(protocol["num_epochs"])
  out = copy.deepcopy(dict(protocol))
  out["num_epochs"] = num_epochs
  for path in EPOCH_FIELDS:
    section, field = path.split(".")
    if out.get(section, {}).get(field) is not None:
      out[section][field] = _scale(out[section][field], num_epochs, of)
  schedule = out.get("schedule", {})
  if "milestones" in schedule:
    kept = dict(zip(schedule["milestones"], schedule["factors"]))
    schedule["milestones"], schedule["factors"] = tuple(kept), tuple(kept.values())
  finetune = out.get("finetune", {})
  if finetune.get("num_epochs", 0) > 0:
    finetune["num_epochs"] = max(1, _scale(finetune["num_epochs"], num_epochs, of))
  return out


# ----------------------------------------------------------------------------- sources

_LDAM_PAPER = ("Cao et al. 2019 (LDAM-DRW), CIFAR setup: ResNet-32, batch 128, SGD momentum "
               "0.9, wd 2e-4, lr 0.1, 5-epoch linear warm-up, x0.01 at 160 and x1e-4 at 180 of "
               "200 epochs, DRW from 160")
_LDAM_CODE = ("kaidic/LDAM-DRW cifar_train.py (adjust_learning_rate, `epoch // 160` DRW, "
              "DataLoader without drop_last)")
_MAMIX_PAPER = ("MAMix paper appendix A.1: ResNet-32, batch 128, 200 epochs, lr 0.1 decayed "
                "x0.01 at 160 and 180, 5-epoch linear warm-up, otherwise 'we followed [12]' "
                "(Cao et al. 2019: momentum 0.9, wd 2e-4, DRW from 160); alpha=1, omega=0.25 "
                "(sec. 4), Remix kappa=3, tau=0.5; DRW loss the per-sample weighted mean "
                "(Algorithm 1)")
_MAMIX_CODE = ("ntucllab/imbalanced-DL: example/config/config_cifar10.yaml, strategy/trainer.py "
               "(adjust_learning_rate), strategy/_{mixup,remix,mamix}_drw.py (clean forward "
               "pass, `epoch // 160` DRW, reduction='none' then mean), net/network.py "
               "(dot_product_classifier: nn.Linear(bias=False)), strategy/base.py (DataLoader "
               "without drop_last)")
_LOBM_PAPER = ("LOBM sec. 4.2: ResNet-32, 200 epochs, lr 0.1 decayed at 160 and 180, alpha=1; "
               "LOBM* switches at the first decay (sec. 3); decay factors, warm-up, batch and "
               "weight decay from its reference [9] (Cao et al. 2019)")
_MANIFOLD_PAPER = ("LOBM sec. 4.2 (its manifold-mixup baseline of Table 1): ResNet-32, 200 "
                   "epochs, lr 0.1 decayed at 160 and 180, alpha=1; decay factors, warm-up, "
                   "batch and weight decay from LOBM's reference [9] (Cao et al. 2019); mixing "
                   "layers {0, 1, 2} drawn uniformly (Verma et al. 2019, sec. 5.1)")
_DBN_PAPER = ("DBN-Mix sec. 4.2: ResNet-32, batch 128, SGD momentum 0.9, wd 2e-4, 200 epochs, "
              "lr 0.1 decayed x0.1 at 120 and 160, schedule 'following [3]' (Cao et al. 2019: "
              "5-epoch warm-up), gamma=inf, eta=3 / eps=0.6 (CIFAR-10; CIFAR-100 eta=7); "
              "alpha=1 (sec. 4.4)")
_DBN_CODE = ("soony1213/DBN-Mix: config/cifar10/cifar10.py (nesterov, step [160, 180], gamma "
             "0.1, warmup_epoch 5), main.py (warmup_step_schedule per iteration from 0 with "
             "ceil(len(loader)) steps per epoch, two forward passes with --use-experts, "
             "SBN-Mix's train-mode accuracy pass `model(input_ori)`), "
             "losses.py (MixLoss: K-scaled temperature, binary loss), data/dataloader.py "
             "(drop_last=False on one GPU, RandomCrop padding_mode='reflect', per-dataset "
             "mean / std), experiments/cifar10.sh")
_CPMIX_PAPER = ("CP-Mix Table 6 and appendix B.3.1: 300 epochs (stage 2 = last 100), batch "
                "128, lr 0.1, wd 2e-4, 10-epoch warm-up, x0.01 at 260 and 280 (cumulative), "
                "t=0.5, alpha=1.5, gamma_cp=gamma_mix=2.5; classifier fine-tuning 30 epochs, "
                "lr 0.1 (CIFAR-10) / 0.5 (CIFAR-100), momentum 0.9, wd 0")
_OTMIX_PAPER = ("OTmix sec. 5 'Implementation Details': ResNet-32, 240 epochs, lr 0.1 decayed "
                "x0.1, x0.1, x0.01 at 100, 160, 200, momentum 0.9, w=0.05, eps=0.01, r=1, "
                "alpha=4, mu=1 (sec. 3.3 / appendix); no warm-up stated; batch 128 and wd 2e-4 "
                "of its reference [1] (Cao et al. 2019); DRW epoch not stated: the code's 160")
_OTMIX_CODE = ("JintongGao/Enhancing-Minority-Classes-by-Mixing: final_otmix/cifar_train.py "
               "(adjust_learning_rate without warm-up, `epoch // 160` DRW, mixup_prob, "
               "start/end_data_aug=3, OT features from the model without its last layer in "
               "train mode, OT epochs drawn with p=(epoch / epochs)^u on the 0-based epoch, "
               "DataLoader without drop_last), opts.py, "
               "imbalance_data/imbalance_cifar.py (per-sample weights 1/n_k)")
_CMO_PAPER = ("CMO (Park et al. 2022), CIFAR-100-LT recipe of LDAM-DRW: 200 epochs, 5-epoch "
              "warm-up, x0.01 at 160, x1e-4 at 180; CutMix lambda ~ Beta(1, 1), oversampling "
              "probability 0.5, foreground law q(1, k) ~ 1 / n_k")
_CMO_CODE = ("naver-ai/cmo: cifar_train.py (adjust_learning_rate with 5-epoch warm-up, "
             "np.random.beta(1, 1), DataLoader without drop_last), opts.py (mixup_prob 0.5, "
             "start/end_data_aug 3), imbalance_data/imbalance_cifar.py (per-sample weights "
             "1/n_k)")
_RIDE_PAPER = ("RIDE (Wang et al. 2021), CIFAR100-LT: ResNet-32 with 3 experts sharing the "
               "stem and stage 1, expert widths 24 / 48 (reduce_dimension), normalised "
               "classifier (s=30); per expert LDAM-DRW plus the distribution-aware diversity "
               "loss (factor -0.2, T0 1, reweight factor 0.05), DRW and class temperatures "
               "from epoch 160; 200 epochs, batch 128, SGD lr 0.1, Nesterov momentum 0.9, wd "
               "5e-4, 5-epoch warm-up, x0.01 at 160, x1e-4 at 180 (CP-Mix appendix B.3.1 "
               "restates RIDE's 'normed layer', Nesterov, wd 0.0005, 200 epochs; the rest as "
               "configs/config_imbalance_cifar100_ride.json); no routing stage (ride_ea adds it)")
_RIDE_CODE = ("frank-xwang/RIDE-LongTailRecognition: configs/config_imbalance_cifar100_ride.json, "
              "train.py (CustomLR: warm-up (1 + epoch) / 5, x gamma at step1, x gamma^2 at "
              "step2), model/loss.py (RIDELoss, `epoch > reweight_epoch` on the 1-based "
              "epoch), model/ldam_drw_resnets/ride_resnet_cifar.py, "
              "data_loader/cifar_data_loaders.py (DataLoader without drop_last; its "
              "RandomRotation(15) has no ltjax counterpart)")
_NO_CODE = "no public code: protocol=code is protocol=paper"


def _paper_only(table: str) -> str:
  return (f"nothing exactly: the paper's stated recipe; {table} was produced by the "
          "authors' code (protocol=code)")


# ------------------------------------------------------------------------------ tables

# LDAM-DRW's CIFAR-LT protocol, the base every method's protocol states its changes to.
_CIFAR: Protocol = {
    "num_epochs": 200,
    "batch_size": 128,
    "drop_last": True,
    "model": {"name": "resnet32"},
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 2e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 5, "warmup_unit": "epoch",
                 "milestones": (160, 180), "factors": (0.01, 1e-4)},
    "augment": {"pad": 4, "flip": True, "pad_mode": "constant"},
    "normalize": "cifar",
    "recipe": {},
    "finetune": {"num_epochs": 0, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
                 "nesterov": False, "schedule": "constant", "batch_size": 0},
}


def _pair(paper: Mapping[str, Any], code: Mapping[str, Any] | None, *, table: str,
          code_source: str) -> dict[str, Protocol]:
  """{"paper", "code"} protocols from the paper's changes to _CIFAR and the code's to those.

  `code=None`: the code trains as the paper says (or there is no code); both protocols then
  reproduce `table`. Otherwise only protocol=code does.
  """
  paper_protocol = merge(_CIFAR, {**paper, "reproduces": table})
  code_protocol = merge(paper_protocol, {**(code or {}), "source": code_source})
  if code:
    paper_protocol["reproduces"] = _paper_only(table)
  return {"paper": paper_protocol, "code": code_protocol}


def _baseline(recipe: Mapping[str, Any], table: str) -> dict[str, Protocol]:
  return _pair({"recipe": recipe, "source": _LDAM_PAPER}, {"drop_last": False}, table=table,
               code_source=_LDAM_CODE)


_DRW_NORMALIZED = {"drw_epoch": 160, "reduction": "normalized"}
_DRW_MEAN = {"drw_epoch": 160, "reduction": "mean"}
_IMBALANCED_DL = {"drop_last": False, "recipe": {"clean_pass": True, "head": "linear_nobias"}}


def _mixup_family(recipe: Mapping[str, Any], table: str) -> dict[str, Protocol]:
  return _pair({"recipe": {"alpha": 1.0, **recipe}, "source": _MAMIX_PAPER}, _IMBALANCED_DL,
               table=table, code_source=_MAMIX_CODE)


def _lobm(recipe: Mapping[str, Any], table: str) -> dict[str, Protocol]:
  return _pair({"recipe": {"alpha": 1.0, **recipe}, "source": _LOBM_PAPER}, None, table=table,
               code_source=_NO_CODE)


def _cb_sampling(recipe: Mapping[str, Any], table: str) -> dict[str, Protocol]:
  """LOBM's class-balanced sampling rows (Table 1): its CIFAR recipe, no mixing."""
  return _pair({"recipe": dict(recipe), "source": _LOBM_PAPER}, None, table=table,
               code_source=_NO_CODE)


_MANIFOLD = _pair({"recipe": {"alpha": 1.0, "layers": (0, 1, 2)}, "source": _MANIFOLD_PAPER},
                  None, table="LOBM Table 1, Manifold Mixup (errors 30.2 / 60.4 on CIFAR-10 / "
                              "100-LT, rho=100)", code_source=_NO_CODE)


def _bilateral(code_recipe: Mapping[str, Any], table: str) -> dict[str, Protocol]:
  paper = {"schedule": {"milestones": (120, 160), "factors": (0.1, 0.01)},
           "recipe": {"alpha": 1.0, "gamma": float("inf"), "eta": 3.0, "eps": 0.6,
                      "temperature": "paper", "loss_form": "ce"},
           "source": _DBN_PAPER}
  code = {"drop_last": False, "optim": {"nesterov": True},
          "schedule": {"milestones": (160, 180), "warmup_unit": "step"},
          "augment": {"pad_mode": "reflect"}, "normalize": "cifar_stats",
          "recipe": {"temperature": "code", "loss_form": "binary", **code_recipe}}
  return _pair(paper, code, table=table, code_source=_DBN_CODE)


_OTMIX_SCHEDULE = {"num_epochs": 240,
                   "schedule": {"warmup_epochs": 0, "milestones": (100, 160, 200),
                                "factors": (0.1, 0.01, 1e-4)}}
_OTMIX_CODE_CHANGES = {"drop_last": False,
                       "recipe": {"r": 0.0, "mix_prob": 0.5, "mix_window": (3, 3),
                                  "ot_features": "train_unpooled", "ot_gate": "code"}}


def _otmix(criterion: Mapping[str, Any], table: str) -> dict[str, Protocol]:
  recipe = {"alpha": 4.0, "r": 1.0, "w": 0.05, "epsilon": 0.01, "mu": 1.0, **criterion}
  return _pair({**_OTMIX_SCHEDULE, "recipe": recipe, "source": _OTMIX_PAPER},
               _OTMIX_CODE_CHANGES, table=table, code_source=_OTMIX_CODE)


def _reproducing(protocol: Mapping[str, Protocol], table: str) -> dict[str, Protocol]:
  """`protocol` (both kinds) with `reproduces` set to `table`."""
  return {kind: {**p, "reproduces": table} for kind, p in protocol.items()}


_CMO = _pair({"recipe": {"alpha": 1.0, "r": 1.0, "mix_prob": 0.5}, "source": _CMO_PAPER},
             {"drop_last": False, "recipe": {"r": 0.0, "mix_window": (3, 3)}},
             table="OTmix Table 1 'ERM + CMO' (errors 25.0 on CIFAR-10-LT, reproduced by the "
                   "OTmix authors; 56.1 on CIFAR-100-LT, from the CMO paper), rho=100",
             code_source=_CMO_CODE)

_CP_MIX = _pair({"num_epochs": 300,
                 "schedule": {"warmup_epochs": 10, "milestones": (260, 280),
                              "factors": (0.01, 1e-4)},
                 "recipe": {"alpha": 1.5, "t": 0.5, "gamma_cp": 2.5, "gamma_mix": 2.5,
                            "stage2_epoch": 200},
                 "finetune": {"num_epochs": 30, "lr": 0.1, "momentum": 0.9,
                              "weight_decay": 0.0},
                 "source": _CPMIX_PAPER},
                None, table="CP-Mix Table 1, CP-Mix (82.44 / 48.20 on CIFAR-10 / 100-LT, "
                            "rho=100)", code_source=_NO_CODE)

# RIDE's CIFAR changes to _CIFAR: the multi-expert model and optimiser of its config, LDAM-DRW
# with the diversity temperatures switched with DRW (one reweight_epoch in the code).
_RIDE_MODEL = {"name": "ride_resnet32"}
_RIDE_OPTIM = {"nesterov": True, "weight_decay": 5e-4}
_RIDE_LOSS = {"drw_epoch": 160, "diversity_epoch": 160, "reduction": "normalized"}
_RIDE_CODE_CHANGES = {"drop_last": False}
_COMBINED_CODE = ("no public code of the combination: protocol=code is RIDE's code changes "
                  "(drop_last=False; " + _RIDE_CODE + ") and the mixing method's")

_RIDE = _pair({"model": _RIDE_MODEL, "optim": _RIDE_OPTIM, "recipe": _RIDE_LOSS,
               "source": _RIDE_PAPER}, _RIDE_CODE_CHANGES,
              table="OTmix Table 1 'RIDE (3 experts)' (errors 18.4 / 51.4 on CIFAR-10 / "
                    "100-LT, rho=100, reproduced by the OTmix authors with RIDE's code; DBN-Mix "
                    "Table 1 (49.10) and CP-Mix Table 1 (49.83) report RIDE with 4 / 6 experts "
                    "on CIFAR-100-LT)", code_source=_RIDE_CODE)

# RIDE with its expert-assignment (routing) stage: the experts trained as `ride`, then the
# routers alone (config_imbalance_cifar100_ride_ea.json: ResNet32EAModel top_choices_num 30,
# pos_weight 100; balanced loader, batch 512, SGD lr 0.01 Nesterov, wd 5e-4,
# CosineAnnealingLR(T_max=5) per epoch, 5 epochs).
_RIDE_ROUTING = {"num_epochs": 5, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                 "nesterov": True, "schedule": "cosine_epoch", "batch_size": 512}
_RIDE_EA = _pair({"model": {**_RIDE_MODEL, "routers": True, "top_choices": 30},
                  "optim": _RIDE_OPTIM, "recipe": {**_RIDE_LOSS, "route_pos_weight": 100.0},
                  "finetune": _RIDE_ROUTING,
                  "source": f"{_RIDE_PAPER}; then RIDE sec. 3.3's routing stage as "
                            "configs/config_imbalance_cifar100_ride_ea.json"},
                 _RIDE_CODE_CHANGES,
                 table="nothing in the seed papers, which report RIDE's accuracy without "
                       "saying whether its routers were used; RIDE's released expert-"
                       "assignment configuration (config_imbalance_cifar100_ride_ea.json)",
                 code_source=f"{_RIDE_CODE}, model/ldam_drw_resnets/ea_resnet_cifar.py")

# CMO applied to RIDE (CMO paper, reported in OTmix Table 1 and CP-Mix Table 1): RIDE's
# protocol and CMO's mixing.
_RIDE_CMO = _pair({"model": _RIDE_MODEL, "optim": _RIDE_OPTIM,
                   "recipe": {"alpha": 1.0, "r": 1.0, "mix_prob": 0.5, **_RIDE_LOSS},
                   "source": f"{_RIDE_PAPER}; CMO's mixing: {_CMO_PAPER}"},
                  {**_RIDE_CODE_CHANGES, "recipe": {"r": 0.0, "mix_window": (3, 3)}},
                  table="OTmix Table 1 'RIDE (3 experts) + CMO' (errors 17.8 on CIFAR-10-LT, "
                        "reproduced by the OTmix authors; 50.0 on CIFAR-100-LT, from the CMO "
                        "paper), rho=100; CP-Mix Table 1 'CMO+RIDE' (50.0)",
                  code_source=f"{_COMBINED_CODE}: {_CMO_CODE}")

# OTmix sec. 5 states one CIFAR-LT recipe for all its rows (240 epochs, its decays, no
# warm-up, momentum 0.9, wd 2e-4 of its reference [1]); RIDE brings its model and loss.
_OTMIX_RIDE = _pair({**_OTMIX_SCHEDULE, "model": _RIDE_MODEL,
                     "recipe": {"alpha": 4.0, "r": 1.0, "w": 0.05, "epsilon": 0.01, "mu": 1.0,
                                **_RIDE_LOSS},
                     "source": f"{_OTMIX_PAPER}; RIDE's model and loss: {_RIDE_PAPER}"},
                    {**_OTMIX_CODE_CHANGES, **_RIDE_CODE_CHANGES},
                    table="OTmix Table 1 'RIDE (3 experts) + OTmix' (errors 17.3 / 49.3 on "
                          "CIFAR-10 / 100-LT, rho=100); CP-Mix Table 1 'OTMix+RIDE' (50.7)",
                    code_source=f"{_COMBINED_CODE}: {_OTMIX_CODE}")

# CP-Mix appendix B.3: "For RIDE results, we strictly follow the settings from the original
# paper ... RIDE uses a deferred reweighting strategy, and we use six experts ... we did not
# fine-tune the classifier"; B.3.1: 200 epochs, normed layer, Nesterov, wd 0.0005. Stage 2 is
# the last third ("two over three of the whole training time is stage 1"); CP-Mix's own
# terms (balanced softmax, CP and mixup CE) each get RIDE's loss on the cosine head, s = 30.
_CP_MIX_RIDE = _pair({"model": {**_RIDE_MODEL, "num_experts": 6}, "optim": _RIDE_OPTIM,
                      "recipe": {"alpha": 1.5, "t": 0.5, "gamma_cp": 2.5, "gamma_mix": 2.5,
                                 "stage2_epoch": 133, "head": "normalized",
                                 "logit_scale": 30.0, "diversity_epoch": 160},
                      "source": f"CP-Mix appendix B.3 / B.3.1 and Table 6; {_RIDE_PAPER}"},
                     None, table="CP-Mix Table 1, 'CP-Mix + RIDE' (81.56 / 51.40 on CIFAR-10 / "
                                 "100-LT, rho=100, six experts)", code_source=_NO_CODE)

_TABLE_9_10 = "MAMix Tables 9 / 10 (CIFAR-10 / 100-LT, rho=100)"

PROTOCOLS: dict[str, dict[str, Protocol]] = {
    "erm": _baseline({}, "the cross-entropy rows of MAMix Tables 9 / 10 (71.23 / 38.46) and "
                         "DBN-Mix Table 1 (70.14 / 38.46), rho=100"),
    "drw": _baseline(_DRW_NORMALIZED, f"{_TABLE_9_10}, DRW (75.08 / 40.40)"),
    "ldam_drw": _baseline(_DRW_NORMALIZED, "DBN-Mix Table 1, LDAM-DRW (77.03 / 42.89 on "
                                           "CIFAR-10 / 100-LT, rho=100, from Cao et al. 2019)"),
    "balanced_softmax": _baseline({}, "nothing: a baseline (balanced softmax, Ren et al. "
                                      "2020) on the LDAM-DRW protocol"),
    "cmo": _CMO,
    "mixup": _mixup_family({}, f"{_TABLE_9_10}, Mixup (74.03 / 40.69)"),
    "mixup_drw": _mixup_family(_DRW_MEAN, f"{_TABLE_9_10}, Mixup-DRW (82.11 / 46.91)"),
    "remix": _mixup_family({"kappa": 3.0, "tau": 0.5}, f"{_TABLE_9_10}, Remix (75.18 / 42.46)"),
    "remix_drw": _mixup_family({"kappa": 3.0, "tau": 0.5, **_DRW_MEAN},
                               f"{_TABLE_9_10}, Remix-DRW (81.82 / 46.00)"),
    "mamix": _mixup_family({"omega": 0.25}, f"{_TABLE_9_10}, MAMix (74.74 / 42.59)"),
    "mamix_drw": _mixup_family({"omega": 0.25, **_DRW_MEAN},
                               f"{_TABLE_9_10}, MAMix-DRW (82.29 / 46.93)"),
    "smote_mix": _mixup_family({}, "nothing: MAMix Table 1 reports SMOTE-Mix only with DRW"),
    "smote_mix_drw": _mixup_family(_DRW_MEAN, "MAMix Table 1, SMOTE-Mix-DRW (77.46 on "
                                              "CIFAR-10-LT, rho=100)"),
    "neighbor_mix": _mixup_family({}, "nothing: MAMix Table 1 reports Neighbor-Mix only with "
                                      "DRW"),
    "neighbor_mix_drw": _mixup_family(_DRW_MEAN, "MAMix Table 1, Neighbor-Mix-DRW (80.44 on "
                                                 "CIFAR-10-LT, rho=100)"),
    "manifold_mixup": _MANIFOLD,
    "lobm": _lobm({}, "LOBM Table 1, 'Ours' (errors 25.8 / 58.5 on CIFAR-10 / 100-LT, "
                      "rho=100)"),
    "lobm_star": _lobm({"defer_epoch": 160}, "LOBM Table 1, 'Ours*' (errors 21.3 / 53.8 on "
                                             "CIFAR-10 / 100-LT, rho=100)"),
    "cb_sampling": _cb_sampling({}, "LOBM Table 1, 'CB Samp.' (errors 31.6 / 68.1 on "
                                    "CIFAR-10 / 100-LT, rho=100)"),
    "drs": _cb_sampling({"defer_epoch": 160}, "LOBM Table 1, 'CB Samp.*' (errors 26.5 / "
                                              "58.5 on CIFAR-10 / 100-LT, rho=100)"),
    "sbn_mix": _bilateral({"clean_pass": True}, "DBN-Mix Table 1, SBN-Mix (76.33 / 45.07 on "
                                                "CIFAR-10 / 100-LT, rho=100)"),
    "dbn_mix": _bilateral({"trunk": "separate"}, "DBN-Mix Table 1, DBN-Mix (83.47 / 51.04 on "
                                                 "CIFAR-10 / 100-LT, rho=100)"),
    "cp_mix": _CP_MIX,
    "otmix": _otmix({}, "OTmix Table 1, 'ERM + OTmix' (errors 21.7 / 53.6 on CIFAR-10 / "
                        "100-LT, rho=100)"),
    "otmix_drw": _otmix(_DRW_NORMALIZED, "OTmix Table 1, 'DRW + OTmix' (errors 16.9 / 52.0)"),
    "otmix_balms": _otmix({}, "OTmix Table 1, 'BALMS + OTmix' (errors 16.0 / 53.2)"),
    "otmix_ldam": _otmix(_DRW_NORMALIZED, "OTmix Table 1, 'LDAM-DRW + OTmix' (errors 18.2 / "
                                          "52.0)"),
    # OTmix sec. 5.3: balanced CIFAR trains "using the same details as on the CIFAR-LT".
    "otmix_saliency": _reproducing(
        _otmix({}, ""), "nothing on CIFAR-LT: the OTmix paper reports OTmix (SaliencyMix) "
                        "only on balanced CIFAR-10 / 100 (Table 3, errors 5.1 / 21.7; "
                        "experiments/configs/cifar10.py, cifar100.py)"),
    "ride": _RIDE,
    "ride_ea": _RIDE_EA,
    "ride_cmo": _RIDE_CMO,
    "otmix_ride": _OTMIX_RIDE,
    "cp_mix_ride": _CP_MIX_RIDE,
}


def get_protocol(name: str, kind: str = "paper") -> Protocol:
  """A copy of method `name`'s CIFAR-LT protocol of `kind` ("paper" or "code").

  Raises:
    ValueError: unknown method or kind (the message lists the valid ones).
  """
  if name not in PROTOCOLS:
    raise ValueError(f"Unknown method {name!r}; valid methods: {', '.join(PROTOCOLS)}.")
  if kind not in KINDS:
    raise ValueError(f"Unknown protocol {kind!r}; valid protocols: {', '.join(KINDS)}.")
  return copy.deepcopy(PROTOCOLS[name][kind])


def methods_with(field: str) -> tuple[str, ...]:
  """The methods whose paper protocol sets recipe field `field` (e.g. "drw_epoch")."""
  return tuple(n for n, p in PROTOCOLS.items() if field in p["paper"]["recipe"])
