"""Places-LT (Liu et al. 2019; 365 classes, 62,500 training images, 4,980 to 5 per class).

Data layout (`ltjax.data.filelists.load_split_lists`): `--config.dataset.data_dir=DIR` holds
the OLTR split files Places_LT_train.txt and Places_LT_test.txt (one `<relative path>
<label>` per line, labels 0..364; from https://github.com/zhmiao/OpenLongTailRecognition-OLTR),
and `--config.dataset.image_root=ROOT` (default DIR) is the Places-365-Standard folder those
paths start from, e.g. ROOT/train/airfield/00004851.jpg for the line
`train/airfield/00004851.jpg 0`. The class profile comes with the split files (the `rho`
argument is unused). A TFDS copy of Places-365 can serve the images only through a list
of its record indices (`ltjax.data.tfds_source.SubsetSource`): the split files name paths.

Input (`input.pipeline="stream"`, grain; `common.STREAM_INPUT`): RandomResizedCrop to 224
(scale (0.08, 1), ratio (3/4, 4/3)), horizontal flip, ColorJitter 0.4 (brightness,
contrast, saturation; hue 0); evaluation: short side 256, central 224 crop; ImageNet mean
(0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225), the statistics of the ImageNet
pretraining. Source: Kang et al. 2020 (code data/dataloader.py, Places_LT). The CIFAR pad-4
crop is off (`augment.pad=0`, `augment.flip=False`).

Base protocol, CP-Mix's (Table 6, appendix B.3.3), for every method: 30 epochs, batch 128,
lr 0.01, x0.1 at 5 and 15, wd 5e-4, no warm-up; DRW from the last decay (15), LOBM* defers
at the first (5). `protocol=paper|code` picks each method's CIFAR-LT protocol underneath
(`ltjax.methods.protocols`). CP-Mix: stage 2 from epoch 15, alpha=1.0,
gamma_cp=gamma_mix=2.0, no classifier fine-tuning (Table 6, B.3.3), input as for
ImageNet-LT ("The same pre-processing is used with ImageNet-LT", B.2.3: resized to
256 x 256, random 224 crop, flip, colour jitter 0.4; `input.crop="resize_random"`).

The papers start from an ImageNet-pretrained ResNet-152 (CP-Mix Table 5 and B.2.3; Kang et
al. 2020; Liu et al. 2019): the model is `resnet152`. ltjax ships no weights: give
ImageNet-pretrained ones with `--config.model.pretrained=PATH`
(`ltjax.models.pretrained.load_pretrained`; the classifier head keeps its initialisation).
Without them the network trains from scratch and its numbers are not comparable with the
papers'.

Usage:
  python -m experiments.train --config=experiments/configs/places_lt.py:method=cp_mix \
      --config.dataset.data_dir=/data/places_lt --config.dataset.image_root=/data/places365 \
      --config.model.pretrained=/weights/resnet152_imagenet.msgpack --workdir=/tmp/places
Arguments: method, protocol (paper|code), seed, epochs (rescales the protocol), quick.
"""

from experiments.configs import common

DATASET = {"name": "places_lt"}
BASE = common.protocols.merge(common.STREAM_BASE, {
    "num_epochs": 30,
    "batch_size": 128,
    "model": {"name": "resnet152"},
    "optim": {"lr": 0.01, "weight_decay": 5e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 0, "milestones": (5, 15),
                 "factors": (0.1, 0.01)},
    "eval_every": 1,
    "checkpoint_every": 1,
    "eval_batch_size": 512,
    "reproduces": "nothing: no paper gives this method's Places-LT recipe",
})
METHOD_OVERRIDES = common.per_method(
    (common.DRW_METHODS, {"recipe": {"drw_epoch": 15}}),
    (common.LOBM_DEFERRED, {"recipe": {"defer_epoch": 5}}),
    (("cp_mix",), {"recipe": {"stage2_epoch": 15, "alpha": 1.0, "gamma_cp": 2.0,
                              "gamma_mix": 2.0},
                   "finetune": {"num_epochs": 0},
                   "input": {"crop": "resize_random"},
                   "reproduces": "CP-Mix Table 2, Places-LT, when started from "
                                 "ImageNet-pretrained ResNet-152 weights "
                                 "(model.pretrained)"}),
)

# Six epochs: the shortest run that keeps the milestone 5 (of 30) after epoch 0.
QUICK = common.protocols.merge(common.STREAM_QUICK, {"num_epochs": 6})


def get_config(arg=None):
  return common.with_stream_placeholders(common.make_config(
      arg, dataset=DATASET, base=BASE, method_overrides=METHOD_OVERRIDES,
      quick=QUICK, default_rho=996.0))
