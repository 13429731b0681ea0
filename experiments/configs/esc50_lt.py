"""ESC-50-LT: LOBM's sound benchmark (LOBM sec. 4, Table 2), EnvNet / EnvNet-v2 on raw audio.

Data (`ltjax.data.esc50`, `--config.dataset.data_dir=PATH`): the ESC-50 release folder
(https://github.com/karolpiczak/ESC-50), holding meta/esc50.csv (columns filename, fold,
target, category, ...) and audio/*.wav (2,000 mono 16-bit 44.1 kHz five-second clips,
50 classes x 40). LOBM sec. 4.1: "We select 8 examples per class to form validation set,
and sample the rest of examples following Pareto distribution ... rho = 10": the
validation set is ESC-50's fold 1 (exactly 8 clips of each class; `dataset.val_fold`),
the other 32 clips per class are subsampled by the Pareto profile n_i = floor(32 (i + 1)
^ (-ln 10 / ln 50)), 32 down to 3 clips (`ltjax.longtail.pareto_counts`; class 0 the
head, the clips kept by the seeded per-class shuffle of `make_longtail`). Clips are
resampled to the network's rate (EnvNet 16 kHz: `ltjax.data.esc50.resample`, or give
ffmpeg-converted files, see that module) and trimmed of leading / trailing zero samples
(the reference's preparation, dataset_gen/esc_gen.py).

Training settings: LOBM sec. 4.2, "we use EnvNet [19] and EnvNet-v2 [2] as backbone
networks and follow the training settings of [2]" (Tokozume et al. 2018, BC learning),
whose code (mil-tokyo/bc_learning_sound, opts.py defaults for ESC-50, train.py,
main.py, dataset.py) gives them; LOBM has no code, so protocol=paper and protocol=code
are the same here:

| net (`net=`) | rate, input L | epochs (BC) | lr   | x0.1 at (of the run) | warm-up        |
|--------------|---------------|-------------|------|----------------------|----------------|
| envnet       | 16 kHz, 24014 | 600 (1200)  | 0.01 | 0.5, 0.75            | none           |
| envnetv2     | 44.1k, 66650  | 1000 (2000) | 0.1  | 0.3, 0.6, 0.9        | 10 epochs x0.1 |

Batch 64 with the last partial batch kept (Chainer iterator, repeat=False), SGD with
Nesterov momentum 0.9 (optax's PyTorch-style form; Chainer's NesterovAG differs in its
transient, not its steady-state step), weight decay 5e-4 on every parameter. The code
doubles the epochs for BC learning ("nEpochs will be doubled if opt.BC"): here for every
mixing method (mixup family and LOBM), with the decays at the same fractions and the
warm-up kept at 10 epochs. LOBM* (not in LOBM Table 2) defers to the first decay (epoch
600 of 1200 / 2000). alpha = 1 (LOBM sec. 4.2, "alpha = 1 for other datasets"), i.e. BC's
r ~ U(0, 1), one per example (`per_sample_lambda`); mixing is BC's rule
(`recipe.input_mix="bc"`, `ltjax.audio.bc_mix`: "mixup is replaced by between-class (BC)
learning [2] for sound recognition", LOBM sec. 4.3).

Input (`augment.kind="waveform"`, `normalize="waveform"`, `ltjax.audio`): training, a
random L-sample crop of the clip padded with L // 2 zeros on both sides, / 32768;
evaluation, 10 crops evenly spaced over the padded clip, softmax averaged (train.py
`val`). No strong augmentation (opts.py `--strongAugment` is off by default).

Methods: erm, drw, ldam_drw, balanced_softmax, cb_sampling, drs (class-balanced sampling
from the first decay), the mixup family (BC mixing), lobm, lobm_star. LOBM Table 2 (top-1
/ top-5 validation error, EnvNet; EnvNet-v2): ERM 54.7 / 24.2; 52.2 / 23.7, CB Samp.
(cb_sampling) 55.7 / 25.3; 54.6 / 29.3, BC (mixup) 47.0 / 25.2; 45.2 / 20.8, Ours (lobm)
44.9 / 21.4; 42.6 / 19.2.

Usage:
  python -m experiments.train --config=experiments/configs/esc50_lt.py:method=lobm,net=envnet \
      --config.dataset.data_dir=/data/ESC-50-master --workdir=/tmp/esc_lobm
Arguments: method, net (envnet|envnetv2), protocol (paper|code, the same here), rho (10),
seed, epochs (rescales the schedule), quick (a tiny EnvNet for smoke runs).
"""

from experiments.configs import common

NETS = ("envnet", "envnetv2")
SOUND_METHODS = ("erm", "drw", "ldam_drw", "balanced_softmax", "cb_sampling", "drs",
                 *common.MIXUP_FAMILY, "lobm", "lobm_star")
MIXING = (*common.MIXUP_FAMILY, "lobm", "lobm_star")

_SOURCE = ("LOBM sec. 4.1-4.3 (ESC-50-LT, rho=10, 'follow the training settings of [2]', "
           "alpha=1, BC learning for mixup); BC learning code mil-tokyo/bc_learning_sound: "
           "opts.py (ESC-50 defaults, batch 64, wd 5e-4, momentum 0.9, nEpochs doubled with "
           "BC, nCrops 10), main.py (NesterovAG, WeightDecay hook), train.py (lr_schedule: "
           "LR * 0.1 ** decays, x0.1 during the warm-up; 10-crop softmax average), dataset.py "
           "(pad L // 2, random crop, / 32768, BC pairs), utils.py (compute_gain, mix), "
           "models/envnet.py, models/envnetv2.py")
_TABLE_2 = "LOBM Table 2, ESC-50-LT rho=10, top-1 / top-5 errors"
# Per net: sampling rate, input length, standard epochs, lr, decay fractions, warm-up epochs.
_NET = {
    "envnet": dict(rate=16000, length=24014, epochs=600, lr=0.01, decays=(0.5, 0.75),
                   warmup=0, rows={"erm": "ERM (54.7 / 24.2)", "cb_sampling": "CB Samp. (55.7 / "
                                   "25.3)", "mixup": "BC (mixup) (47.0 / 25.2)",
                                   "lobm": "Ours (44.9 / 21.4)"}),
    "envnetv2": dict(rate=44100, length=66650, epochs=1000, lr=0.1, decays=(0.3, 0.6, 0.9),
                     warmup=10, rows={"erm": "ERM (52.2 / 23.7)", "cb_sampling": "CB Samp. "
                                      "(54.6 / 29.3)", "mixup": "BC (mixup) (45.2 / 20.8)",
                                      "lobm": "Ours (42.6 / 19.2)"}),
}
# quick=True: conv widths and hidden layers small enough for a CPU smoke run.
_QUICK_MODEL = {"envnet": {"widths": (4, 8, 4, 4), "hidden": (32, 32)},
                "envnetv2": {"widths": (4, 16, 4, 4, 4, 4, 4, 4, 4, 4), "hidden": (32, 32)}}


def schedule(net: str, epochs: int) -> dict:
  """The net's multistep schedule for a run of `epochs` (decays at fixed fractions; the
  warm-up stays 10 epochs: opts.py doubles nEpochs only)."""
  n = _NET[net]
  return {"name": "multistep", "warmup_epochs": n["warmup"], "warmup_unit": "constant",
          "milestones": tuple(int(epochs * f) for f in n["decays"]),
          "factors": tuple(0.1 ** (j + 1) for j in range(len(n["decays"])))}


def base(net: str) -> dict:
  n = _NET[net]
  return {
      "num_epochs": n["epochs"],
      "batch_size": 64,
      "drop_last": False,
      "model": {"name": net},
      "optim": {"lr": n["lr"], "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
      "schedule": schedule(net, n["epochs"]),
      "augment": {"kind": "waveform", "length": n["length"], "crops": 10, "pad": 0,
                  "flip": False},
      "normalize": "waveform",
      "eval_every": 10,
      "eval_batch_size": 16,  # clips; x 10 crops per call
      "plots": True,
      "source": _SOURCE,
      "reproduces": f"nothing: {_TABLE_2} reports ERM, CB Samp., BC (mixup) and Ours",
  }


def method_overrides(net: str) -> dict:
  n = _NET[net]
  bc_epochs = 2 * n["epochs"]
  first_decay = int(bc_epochs * n["decays"][0])
  return common.per_method(
      (MIXING, {"num_epochs": bc_epochs, "schedule": schedule(net, bc_epochs),
                "recipe": {"alpha": 1.0, "input_mix": "bc", "sample_rate": n["rate"],
                           "per_sample_lambda": True}}),
      (("lobm_star",), {"recipe": {"defer_epoch": first_decay},
                        "reproduces": f"nothing: {_TABLE_2} has no Ours*"}),
      (("drs",), {"recipe": {"defer_epoch": int(n["epochs"] * n["decays"][0])},
                  "reproduces": f"nothing: {_TABLE_2} has no CB Samp.*"}),
      *common.table_rows(f"{_TABLE_2}, {net}", n["rows"]))


# protocol=code is the BC-learning code's training, not the CIFAR code differences of the
# mixup family's imbalanced-DL trainers (clean pass, bias-free head).
CODE_OVERRIDES = common.per_method(
    (common.MIXUP_FAMILY, {"recipe": {"clean_pass": False, "head": "linear"}}))


def _split_arg(arg: str | None) -> tuple[str, str]:
  """(net, the rest of the argument) with profile=pareto unless the argument sets one."""
  net, rest = "envnet", []
  for item in filter(None, (a.strip() for a in (arg or "").split(","))):
    key, _, value = item.partition("=")
    if key.strip() == "net":
      net = value.strip()
    else:
      rest.append(item)
  if net not in NETS:
    raise ValueError(f"Unknown net {net!r} for ESC-50-LT; valid: {', '.join(NETS)}.")
  if not any(item.partition("=")[0].strip() == "profile" for item in rest):
    rest.append("profile=pareto")
  return net, ",".join(rest)


def get_config(arg=None):
  net, rest = _split_arg(arg)
  method = common.parse_arg(rest, method="erm", protocol="paper", rho=10.0, profile="pareto",
                            seed=0, epochs=None, quick=False).method
  if method not in SOUND_METHODS:
    raise ValueError(f"ESC-50-LT trains {', '.join(SOUND_METHODS)} on raw waveforms; "
                     f"{method!r} needs images (CutMix boxes, hidden-state mixing) or a "
                     "dual-branch / multi-expert model.")
  n = _NET[net]
  quick = {"model": {"name": net, **_QUICK_MODEL[net]}, "batch_size": 16, "eval_every": 1,
           "eval_batch_size": 4}
  config = common.make_config(
      rest, dataset={"name": "esc50_lt", "sample_rate": n["rate"], "val_fold": 1,
                     "trim": True},
      base=base(net), method_overrides=method_overrides(net), code_overrides=CODE_OVERRIDES,
      quick=quick, default_rho=10.0)
  config.arg = arg or ""
  return config
