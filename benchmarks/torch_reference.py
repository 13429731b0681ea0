"""PyTorch reference training loop in the style of the authors' code, timed per epoch.

The loop of LDAM-DRW / ImbalancedDL / MAMix (`train()` in their cifar_train.py), written
here from scratch so ltjax can be compared with what the papers ran:

- data: the same long-tailed subset as ltjax (`ltjax.data.get_dataset`, same seed, so the
  same kept indices), held as uint8 HWC arrays; a torch `Dataset` gives PIL images to
  torchvision's `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`,
  `Normalize(CIFAR mean, std)` on the CPU, in a `DataLoader(shuffle=True,
  num_workers=4, pin_memory=True)` (memory pinned on a GPU only; a numpy transcription of
  the same four transforms is used when torchvision is missing; the results name which);
- model: ResNet-32 with option-A shortcuts as in LDAM-DRW's resnet_cifar.py (3 stages x 5
  basic blocks, 16/32/64 channels, stride-2 subsample + zero channel padding, Kaiming-normal
  init of convolutions and the linear layer); `cudnn.benchmark = True`;
- optimiser: SGD lr 0.1, momentum 0.9, weight decay 2e-4 (float32, no AMP);
- ERM: cross-entropy. Mixup (Zhang et al. 2018, the reference `mixup_data`): one
  lam ~ Beta(alpha, alpha) per batch drawn with numpy, `torch.randperm` on the device,
  `x = lam x + (1 - lam) x[perm]`, loss `lam CE(y) + (1 - lam) CE(y[perm])`;
- every step reads `loss.item()` for the running average, as the reference does.

An epoch is timed from the first batch request to `torch.cuda.synchronize()` after the last
step, so worker start-up and CPU augmentation count, as they do in the reference. Reported:
the median of `--epochs` epochs after `--warmup`.

torch is imported lazily; without it the script exits with a message saying how to get it.

Usage (from the repository root):
  python -m benchmarks.torch_reference --methods=erm,mixup --epochs=3
  python -m benchmarks.torch_reference --dataset=digits_lt --steps_per_epoch=3 --workers=0
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any, Sequence

import numpy as np

from benchmarks import epoch_speed
from ltjax import augment
from ltjax import data as ltdata

METHODS = ("erm", "mixup")
TORCH_HINT = ("PyTorch is not installed: `pip install torch torchvision` (a CPU wheel is "
              "enough to try it; the GPU machine has both).")


def require_torch():
  """The torch module, or ImportError with TORCH_HINT."""
  try:
    return importlib.import_module("torch")
  except ImportError as err:
    raise ImportError(TORCH_HINT) from err


def build_resnet32(torch, num_classes: int, in_channels: int = 3):
  """ResNet-32 (option A) as LDAM-DRW's resnet_cifar.resnet32, written from scratch."""
  nn, functional = torch.nn, torch.nn.functional

  class ShortcutA(nn.Module):
    """Stride-2 subsample and zero channel padding (option A)."""

    def __init__(self, pad: int):
      super().__init__()
      self.pad = pad

    def forward(self, x):
      return functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

  class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      needs = stride != 1 or in_planes != planes
      self.shortcut = ShortcutA(planes // 4) if needs else nn.Identity()

    def forward(self, x):
      out = functional.relu(self.bn1(self.conv1(x)))
      return functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

  class ResNet32(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(16)
      layers, in_planes = [], 16
      for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(5):
          layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
          in_planes = planes
      self.layers = nn.Sequential(*layers)
      self.linear = nn.Linear(64, num_classes)
      for m in self.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
          nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
      out = self.layers(functional.relu(self.bn1(self.conv1(x))))
      out = functional.avg_pool2d(out, out.size()[3]).flatten(1)
      return self.linear(out)

  return ResNet32()


def normalization(ds: ltdata.ArrayDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """CIFAR mean / std for RGB images, the training set's statistics otherwise."""
  if ds.train_images.shape[-1] == 3:
    return augment.CIFAR_MEAN, augment.CIFAR_STD
  pixels = ds.train_images.reshape(-1, ds.train_images.shape[-1]) / 255.0
  return tuple(pixels.mean(0)), tuple(np.maximum(pixels.std(0), 1e-3))


def torchvision_transform(size: int, pad: int, mean, std):
  """The reference's torchvision pipeline, or None when torchvision is missing."""
  try:
    transforms = importlib.import_module("torchvision.transforms")
  except ImportError:
    return None
  return transforms.Compose([transforms.RandomCrop(size, padding=pad),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(mean, std)])


def numpy_transform(torch, size: int, pad: int, mean, std):
  """The same four transforms on a uint8 HWC array, without torchvision (per image, CPU)."""
  mean = np.asarray(mean, np.float32)[:, None, None]
  std = np.asarray(std, np.float32)[:, None, None]

  def transform(image: np.ndarray):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    y, x = np.random.randint(0, padded.shape[0] - size + 1, 2)
    crop = padded[y:y + size, x:x + size]
    if np.random.rand() < 0.5:
      crop = crop[:, ::-1]
    chw = crop.transpose(2, 0, 1).astype(np.float32) / 255.0
    return torch.from_numpy((chw - mean) / std)

  return transform


def make_loader(torch, ds: ltdata.ArrayDataset, batch_size: int, workers: int,
                pin_memory: bool, pad: int = 4) -> tuple[Any, str]:
  """The reference DataLoader over the long-tailed arrays, and the transform's name."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  size = ds.train_images.shape[1]
  mean, std = normalization(ds)
  tv = torchvision_transform(size, pad, mean, std)
  kind = "torchvision" if tv is not None else "numpy transcription (no torchvision)"
  transform = numpy_transform(torch, size, pad, mean, std) if tv is None else tv
  images, labels = ds.train_images, ds.train_labels.astype(np.int64)
  gray = images.shape[-1] == 1

  class LongTailed(torch.utils.data.Dataset):
    def __len__(self):
      return labels.size

    def __getitem__(self, i):
      image = images[i]
      if tv is not None:
        image = Image.fromarray(image[..., 0] if gray else image)
      return transform(image), labels[i]

  loader = torch.utils.data.DataLoader(LongTailed(), batch_size=batch_size, shuffle=True,
                                       num_workers=workers, pin_memory=pin_memory)
  return loader, kind


def mixup_loss(torch, model, criterion, x, y, alpha: float):
  """The reference `mixup_data` + `mixup_criterion`: one lambda per batch."""
  lam = float(np.random.beta(alpha, alpha))
  index = torch.randperm(x.size(0), device=x.device)
  out = model(lam * x + (1 - lam) * x[index])
  return lam * criterion(out, y) + (1 - lam) * criterion(out, y[index])


def train_epoch(torch, model, loader, optimizer, criterion, device, method: str,
                alpha: float) -> tuple[float, int]:
  """One reference epoch; returns (mean loss, images seen)."""
  model.train()
  total, seen = 0.0, 0
  for x, y in loader:
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if method == "mixup":
      loss = mixup_loss(torch, model, criterion, x, y, alpha)
    else:
      loss = criterion(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    total += loss.item() * x.size(0)
    seen += x.size(0)
  return total / max(seen, 1), seen


def resolve_device(torch, device: str):
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  return torch.device(device)


def time_reference(ds: ltdata.ArrayDataset, methods: Sequence[str] = METHODS,
                   batch_size: int = 128, epochs: int = 3, warmup: int = 1,
                   workers: int = 4, device: str = "auto", alpha: float = 1.0,
                   seed: int = 0) -> dict[str, Any]:
  """Seconds per reference epoch of each method on `ds`'s training split.

  Returns:
    {"device", "transform", "workers", "methods": {name: {epoch_s, epoch_times_s,
    images_per_s, images, final_loss}}}.

  Raises:
    ImportError: torch is missing (message TORCH_HINT).
  """
  torch = require_torch()
  torch.manual_seed(seed)
  np.random.seed(seed)
  dev = resolve_device(torch, device)
  torch.backends.cudnn.benchmark = True
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  loader, kind = make_loader(torch, ds, batch_size, workers, dev.type == "cuda")
  rows = {}
  for method in methods:
    if method not in METHODS:
      raise ValueError(f"the reference loop runs {METHODS}, got {method!r}.")
    model = build_resnet32(torch, ds.num_classes, ds.train_images.shape[-1]).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                weight_decay=2e-4)
    criterion = torch.nn.CrossEntropyLoss().to(dev)
    times = []
    for e in range(warmup + epochs):
      sync()
      start = time.perf_counter()
      loss, seen = train_epoch(torch, model, loader, optimizer, criterion, dev, method,
                               alpha)
      sync()
      if e >= warmup:
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    rows[method] = {"epoch_s": median, "epoch_times_s": times, "images": seen,
                    "images_per_s": seen / median, "final_loss": loss}
  return {"device": str(torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev),
          "torch": torch.__version__, "transform": kind, "workers": workers,
          "batch_size": batch_size, "note": (f"torch {torch.__version__} on {dev}, "
                                             f"{workers} DataLoader workers, {kind} "
                                             "augmentation"),
          "methods": rows}


def markdown(result: dict[str, Any]) -> str:
  lines = epoch_speed.header_lines("torch_reference", result["environment"],
                                   result["command"])
  ref = result["reference"]
  lines += [f"- torch loop: {ref['note']}; data: {result['data_note']}, "
            f"{result['train_images']} images", "",
            "| method | batch | s/epoch | images/s | loss |", "|---|---|---|---|---|"]
  for m, r in ref["methods"].items():
    lines.append(f"| {m} | {ref['batch_size']} | {r['epoch_s']:.3f} | "
                 f"{r['images_per_s']:.0f} | {r['final_loss']:.3f} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="cifar10_lt")
  p.add_argument("--rho", type=float, default=None)
  p.add_argument("--seed", type=int, default=0, help="long-tail subset seed (as ltjax)")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--synthetic", action="store_true")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--steps_per_epoch", type=int, default=None,
                 help="a stratified subset of steps * batch images (as epoch_speed)")
  p.add_argument("--workers", type=int, default=4)
  p.add_argument("--device", default="auto")
  p.add_argument("--alpha", type=float, default=1.0)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  try:
    require_torch()
  except ImportError as err:
    raise SystemExit(str(err)) from None
  ds, note = epoch_speed.load_train_set(args.dataset, args.rho, args.seed, args.data_dir,
                                        args.synthetic)
  ds = epoch_speed.train_set_for(ds, args.steps_per_epoch, args.batch_size)
  methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
  ref = time_reference(ds, methods, args.batch_size, args.epochs, args.warmup, args.workers,
                       args.device, args.alpha, args.seed)
  result = {"benchmark": "torch_reference",
            "command": epoch_speed.command_line("benchmarks.torch_reference"),
            "args": vars(args), "environment": epoch_speed.environment(), "data_note": note,
            "train_images": int(ds.train_labels.size), "reference": ref}
  epoch_speed.publish("torch_reference", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
