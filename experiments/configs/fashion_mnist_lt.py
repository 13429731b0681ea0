"""Fashion-MNIST-LT: 28x28 grayscale, exponential profile (rho=100 by default).

Not a dataset of the papers: it runs each method's CIFAR-LT protocol (ResNet-32, which
pools globally and so takes 28x28 inputs), `protocol=paper` (default) or `protocol=code`,
rescaled to 100 epochs by default (`epochs=` changes it); grayscale images are normalised
with the training set's statistics.

Usage:
  python -m experiments.train \
      --config=experiments/configs/fashion_mnist_lt.py:method=mamix_drw,epochs=50 \
      --workdir=/tmp/fmnist
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick. `--config.dataset.data_dir=PATH` says where the dataset's files are
(default: the search path of `ltjax.data`, `LTJAX_DATA_DIR`).
"""

from experiments.configs import common

DATASET = {"name": "fashion_mnist_lt"}
BASE = {"reproduces": "nothing: Fashion-MNIST-LT is not a dataset of the papers"}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE, default_rho=100.0,
                            default_epochs=100)
