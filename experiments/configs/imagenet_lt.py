"""ImageNet-LT (Liu et al. 2019; 1,000 classes, 115,846 training images, 1,280 to 5 per class).

Data layout (`ltjax.data.filelists.load_split_lists`): `--config.dataset.data_dir=DIR` holds
the OLTR split files ImageNet_LT_train.txt and ImageNet_LT_test.txt (one
`<relative path> <label>` per line, labels 0..999; from
https://github.com/zhmiao/OpenLongTailRecognition-OLTR), and
`--config.dataset.image_root=ROOT` (default DIR) is the ImageNet-2012 folder those paths
start from: ROOT/train/n01440764/n01440764_10026.JPEG for the training list and
ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG for the test list (the validation images
sorted into one folder per synset). The class profile comes with the split files (the
`rho` argument is unused). The images can instead come from TFDS `imagenet2012` prepared
in ArrayRecord format (`tfds build imagenet2012 --file_format=array_record`;
`pip install 'ltjax[tfds]'`): `--config.dataset.images=tfds` (optionally
`--config.dataset.tfds_data_dir=DIR`) reads the records of its "train" and "validation"
splits that the split files name, matched by file name
(`ltjax.data.tfds_source.split_file_source`; indexing the 1.28 M names takes minutes at the
start of a run), decoded in the grain workers; `dataset.image_root` is then unused.

Input (`input.pipeline="stream"`, grain; `common.STREAM_INPUT`): RandomResizedCrop to 224
(scale (0.08, 1), ratio (3/4, 4/3)), horizontal flip, ColorJitter 0.4 (brightness,
contrast, saturation; hue 0); evaluation: short side 256, central 224 crop; ImageNet mean
(0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225). Source: Kang et al. 2020 (code
data/dataloader.py), which LOBM follows (sec. 4.2, "following [11]") and the OTmix code
uses (imagenet_train.py). The CIFAR pad-4 crop is off (`augment.pad=0`, `augment.flip=False`).

Base protocol, for every method the papers give no ImageNet-LT recipe: ResNet-50, batch
256, SGD momentum 0.9, lr 0.2, wd 2e-4, 5-epoch warm-up, x0.1 at 60 and 80 of 90 epochs
(DBN-Mix sec. 4.2, "standard schedule"); DRW from the last decay (80); alpha=0.2 for every
input-mixup method (DBN-Mix sec. 4.4, LOBM sec. 4.2). `protocol=paper|code` picks each
method's CIFAR-LT protocol underneath (`ltjax.methods.protocols`); per method:

- LOBM / LOBM*: ResNet-10, 90 epochs, lr 0.2 with cosine decay, no warm-up stated, alpha=0.2
  (LOBM sec. 4.2); LOBM* defers at epoch 60, the first decay of the standard schedule (a
  cosine schedule has none). Reproduces LOBM Table 1, ImageNet-LT column.
- DBN-Mix / SBN-Mix: eta=9, eps=0.2, alpha=0.2 on the standard schedule (DBN-Mix sec. 4.2,
  4.4); input as sec. 4.2 states it: resize to 256 x 256, random 224 x 224 crop, horizontal
  flip, no colour jitter (`input.crop="resize_random"`, `input.jitter=0`). Reproduces DBN-Mix
  Table 2 (standard schedule, 55.9 %); the authors' code has no ImageNet-LT configuration.
- CP-Mix (Table 6, appendix B.3.2): batch 192, 180 epochs with cosine annealing and no
  warm-up, lr 0.1, wd 5e-4, stage 2 from 120, alpha=3.0, gamma_cp=gamma_mix=1.0, classifier
  fine-tuning 10 epochs at lr 0.5 (appendix B.3.2; Table 6 says 0.05); input as appendix
  B.2.2 states it: resized to 256 x 256, random crop, horizontal flip, colour jitter (the
  strength is not given: 0.4, Kang et al.'s). Reproduces CP-Mix Table 2, ImageNet-LT.
- OTmix (sec. 5): 200 epochs, batch 128 (appendix 7.4; the code's opts.py default), lr 0.1,
  x0.1 at 40, x0.01 at 80, x1e-4 at 160, no warm-up stated; the code (imagenet_train.py)
  warms up 5 epochs, takes the OT features from the pooled output of a training-mode pass
  (`ot_features="train"`) and starts DRW at 80 (`epoch // 80`). Reproduces OTmix Table 2,
  ImageNet-LT. The code starts from torchvision's ImageNet-pretrained ResNet-50
  (`resnet50(pretrained=True)`); ltjax ships no weights: give them with
  `--config.model.pretrained=PATH` (`ltjax.models.pretrained`).
- RIDE and its combinations (ride, ride_ea, ride_cmo, otmix_ride, cp_mix_ride): RIDE's
  ResNet-50 with 3 experts (`ride_resnet50`, stages 3-4 per expert, 192 / 384 planes) and
  config_imagenet_lt_resnet50_ride.json: 100 epochs, batch 256, lr 0.1, Nesterov, wd 2e-4,
  5-epoch warm-up, x0.1 at 60, x0.01 at 80, DRW and class temperatures from 80 (reweight
  factor 0.02); ride_ea then trains the routers 5 epochs (top_choices 50, batch 512, lr
  0.01 cosine; config_imagenet_lt_resnet50_ride_ea.json). Reproduces the 'RIDE' rows of
  CP-Mix / DBN-Mix Table 2.

Usage:
  python -m experiments.train --config=experiments/configs/imagenet_lt.py:method=dbn_mix \
      --config.dataset.data_dir=/data/imagenet_lt --config.dataset.image_root=/data/imagenet \
      --workdir=/tmp/inlt
Arguments: method, protocol (paper|code), seed, epochs (rescales the protocol), quick.
"""

import ml_collections

from experiments.configs import common

DATASET = {"name": "imagenet_lt", "images": "files", "tfds_name": "imagenet2012",
           "tfds_data_dir": ml_collections.config_dict.placeholder(str)}
BASE = common.protocols.merge(common.STREAM_BASE, {
    "num_epochs": 90,
    "batch_size": 256,
    "model": {"name": "resnet50"},
    "optim": {"lr": 0.2, "weight_decay": 2e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": (60, 80),
                 "factors": (0.1, 0.01)},
    "eval_every": 5,
    "checkpoint_every": 1,
    "eval_batch_size": 512,
    "reproduces": "nothing: no paper gives this method's ImageNet-LT recipe",
})
_COSINE = {"name": "cosine", "warmup_epochs": 0, "milestones": (), "factors": ()}
# "resizing to 256 x 256, and random cropping to 224 x 224" (DBN-Mix sec. 4.2; CP-Mix B.2.2).
_RESIZE_CROP = {"crop": "resize_random"}
METHOD_OVERRIDES = common.per_method(
    # The last decay of the standard schedule, and OTmix's code (`epoch // 80`).
    (common.DRW_METHODS, {"recipe": {"drw_epoch": 80}}),
    (common.MIXUP_FAMILY + ("lobm", "lobm_star", "dbn_mix", "sbn_mix"),
     {"recipe": {"alpha": 0.2}}),
    (common.LOBM_TABLE, {"model": {"name": "resnet10"}, "schedule": _COSINE}),
    (common.LOBM_DEFERRED, {"recipe": {"defer_epoch": 60}}),
    *common.table_rows("LOBM Table 1, ImageNet-LT, errors", {
        "lobm": "Ours (63.0)", "lobm_star": "Ours* (59.6)", "cb_sampling": "CB Samp. (64.4)",
        "drs": "CB Samp.* (60.1)"}),
    (("dbn_mix", "sbn_mix"), {"recipe": {"eta": 9.0, "eps": 0.2},
                              "input": {**_RESIZE_CROP, "jitter": 0.0}}),
    (("dbn_mix",), {"reproduces": "DBN-Mix Table 2, standard schedule (55.9 %)"}),
    (("cp_mix",), {"num_epochs": 180, "batch_size": 192,
                   "optim": {"lr": 0.1, "weight_decay": 5e-4}, "schedule": _COSINE,
                   "recipe": {"stage2_epoch": 120, "alpha": 3.0, "gamma_cp": 1.0,
                              "gamma_mix": 1.0},
                   "finetune": {"num_epochs": 10, "lr": 0.5},
                   "input": _RESIZE_CROP,
                   "reproduces": "CP-Mix Table 2, ImageNet-LT"}),
    (common.OTMIX_FAMILY, {"num_epochs": 200, "batch_size": 128, "optim": {"lr": 0.1},
                           "schedule": {"warmup_epochs": 0, "milestones": (40, 80, 160),
                                        "factors": (0.1, 0.01, 1e-4)},
                           "reproduces": "OTmix Table 2, ImageNet-LT (trained by the "
                                         "authors' code from an ImageNet-pretrained "
                                         "ResNet-50: protocol=code, model.pretrained)"}),
    *common.ride_large(batch_size=256, lr=0.1, reweight_factor=0.02, top_choices=50,
                       reproduces="CP-Mix Table 2 / DBN-Mix Table 2 'RIDE' (55.4 %, 3 "
                                  "experts; the combinations: CP-Mix Table 2)"),
)
CODE_OVERRIDES = common.per_method(
    (common.OTMIX_FAMILY, {"schedule": {"warmup_epochs": 5},
                           "recipe": {"ot_features": "train"}}))


def get_config(arg=None):
  return common.with_stream_placeholders(common.make_config(
      arg, dataset=DATASET, base=BASE, method_overrides=METHOD_OVERRIDES,
      code_overrides=CODE_OVERRIDES, quick=common.STREAM_QUICK, default_rho=256.0))
