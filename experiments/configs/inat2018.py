"""iNaturalist 2018 (8,142 classes, naturally long-tailed; rho is about 500).

The class profile comes with the dataset's file lists (the `rho` argument is unused).
Protocol (DBN-Mix paper): ResNet-50, batch 256, SGD momentum 0.9, lr 0.1, wd 1e-4,
x0.1 at 120 and 160 of 200 epochs. Per method:

- DBN-Mix / SBN-Mix: eta=10, eps=0.02.
- CP-Mix: 100 epochs, warm-up 10, x0.1 at 60 and 80, wd 2e-4, normalised classifier,
  stage 2 from 50, fine-tuning 10 epochs at lr 3.0 (CP-Mix appendix B.3).
- OTmix: 210 epochs, x0.1 at 30, 80, 130 and 180 (OTmix section 5).
- DRW variants: DRW from the last decay (epoch 160).

Usage:
  python -m experiments.train --config=experiments/configs/inat2018.py:method=otmix \
      --config.dataset.data_dir=/data/inat2018 --workdir=/tmp/inat
Arguments: method, seed, epochs (rescales the recipe), quick.
"""

from experiments.configs import common

DATASET = {"name": "inat2018"}
BASE = {
    "num_epochs": 200,
    "batch_size": 256,
    "model": {"name": "resnet50"},
    "optim": {"lr": 0.1, "weight_decay": 1e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": (120, 160),
                 "factors": (0.1, 0.01)},
    "eval_every": 5,
    "checkpoint_every": 1,
    "eval_batch_size": 512,
}
_DBN = {"recipe": {"eta": 10.0, "eps": 0.02}}
_DRW = {"recipe": {"drw_epoch": 160}}
METHOD_OVERRIDES = {
    "mixup_drw": _DRW,
    "remix_drw": _DRW,
    "mamix_drw": _DRW,
    "drw": _DRW,
    "ldam_drw": _DRW,
    "dbn_mix": _DBN,
    "sbn_mix": _DBN,
    "cp_mix": {"num_epochs": 100, "optim": {"weight_decay": 2e-4},
               "schedule": {"warmup_epochs": 10, "milestones": (60, 80),
                            "factors": (0.1, 0.01)},
               "recipe": {"stage2_epoch": 50, "head": "normalized"},
               "finetune": {"num_epochs": 10, "lr": 3.0}},
    "otmix": {"num_epochs": 210,
              "schedule": {"milestones": (30, 80, 130, 180),
                           "factors": (0.1, 0.01, 1e-3, 1e-4)}},
}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE,
                            method_overrides=METHOD_OVERRIDES, default_rho=500.0)
