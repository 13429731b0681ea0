"""Fashion-MNIST-LT: 28x28 grayscale, exponential profile (rho=100 by default).

Not a dataset of the papers: it runs the CIFAR recipes (ResNet-32, which pools globally
and so takes 28x28 inputs) rescaled to 100 epochs by default (`epochs=` changes it).

Usage:
  python -m experiments.train \
      --config=experiments/configs/fashion_mnist_lt.py:method=mamix_drw,epochs=50 \
      --workdir=/tmp/fmnist
Arguments: method, rho, profile (exp|step), seed, epochs (rescales the recipe), quick.
"""

from experiments.configs import common

DATASET = {"name": "fashion_mnist_lt"}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, default_rho=100.0, default_epochs=100)
