"""SVHN-LT: exponential profile (rho=100 by default), ResNet-32, the MAMix paper's recipe.

MAMix paper (Cheng et al.), appendix A.3: "ResNet-32 ... 200 epochs, with initial learning
rate of 0.1 and batch size of 128. We used linear warm-up schedule, and decay the learning
rate by 0.1 at the 160th, and 180th epochs. When DRW was deployed, it was deployed at the
160th epoch." `protocol=paper`: x0.1 at 160 and x0.01 at 180, a 5-epoch warm-up, momentum
0.9 and weight decay 2e-4 of its reference (Cao et al. 2019). `protocol=code`: the
imbalanced-DL code trains every 200-epoch run on one schedule (strategy/trainer.py
`adjust_learning_rate`: x0.01 at 160, x1e-4 at 180), so the code protocol keeps the CIFAR-LT
one. LDAM's largest margin 0.5. Head-class size 4,659 (the digit 9, SVHN's smallest training
class); the paper also reports rho 50 and 10 and the step profile (mu 0.5, `profile=step`).

Model: ResNet-32; input: pad-4 random crop and horizontal flip (the code's
dataset/imbalance_dataset.py, flip included), normalised by mean 0.5 / std 0.5, on the
device. Labels: class k is the digit k (the .mat files' label 10 is the digit 0).

Data layout (`ltjax.data.svhn`): the cropped-digits files train_32x32.mat and
test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ in
`--config.dataset.data_dir=PATH`, or tensorflow-datasets `svhn_cropped`
(`--config.dataset.source=tfds`, `pip install 'ltjax[tfds]'`).

Usage:
  python -m experiments.train \
      --config=experiments/configs/svhn_lt.py:method=mamix_drw \
      --config.dataset.data_dir=/data/svhn --workdir=/tmp/svhn
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick.
"""

from experiments.configs import common

DATASET = {"name": "svhn_lt", "source": "files"}
BASE = {
    "num_epochs": 200,
    "model": {"name": "resnet32"},
    "schedule": {"warmup_epochs": 5, "milestones": (160, 180), "factors": (0.1, 0.01)},
    "normalize": "half",
    "reproduces": "nothing: the MAMix paper does not run this method on SVHN-LT",
}
# MAMix Table 13 (top-1 validation accuracy, %, ResNet-32, exponential profile, rho=100).
TABLE_13 = {"erm": "ERM (79.91)", "mixup": "Mixup (81.57)", "remix": "Remix (82.37)",
            "mamix": "Ours (82.39)", "drw": "DRW (80.68)", "ldam_drw": "LDAM-DRW (83.48)",
            "mixup_drw": "Mixup-DRW (85.19)", "remix_drw": "Remix-DRW (84.52)",
            "mamix_drw": "MAMix-DRW (85.41)"}
METHOD_OVERRIDES = common.per_method(
    (common.DRW_METHODS, {"recipe": {"drw_epoch": 160}}),
    *common.table_rows("MAMix Table 13, SVHN-LT rho=100", TABLE_13))
# The code's one 200-epoch schedule (x0.01 at 160, x1e-4 at 180) for every method.
CODE_OVERRIDES = {name: {"schedule": {"factors": (0.01, 1e-4)}} for name in
                  common.protocols.PROTOCOLS}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE,
                            method_overrides=METHOD_OVERRIDES, code_overrides=CODE_OVERRIDES,
                            default_rho=100.0)
