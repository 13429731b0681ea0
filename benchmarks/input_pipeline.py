"""Input pipeline throughput: ltjax's grain loader against torchvision's, same run, same files.

Both pipelines decode JPEG files of one synthetic image folder (generated under a temporary
directory, `--num_images` files of `--height` x `--width` px in `--num_classes` classes with
exponentially decaying counts; every file was just written, so both read it from the page
cache), apply the ImageNet-LT training augmentation, RandomResizedCrop(`--size`),
horizontal flip, ColorJitter(0.4, 0.4, 0.4), and batch `--batch_size` images:

- ltjax: `ltjax.data.pipeline.make_loader` over an `ImageFileSource` (full-size decode, or
  `draft_size=--size`: JPEG DCT scaling), with a `ClassLawSampler` (class-balanced) or
  grain's shuffled `IndexSampler`, and `pipeline.train_transforms`; batches of uint8
  (B, H, W, C), normalised later on the device. `ltjax_stream*`: what training reads
  through, `ltjax.data.stream.FeedStream` of a `StreamedDataset` (every step's shuffled
  clean batch, as ERM's `fit` reads it; grain `mp_prefetch` workers).
- torch: `torchvision.datasets.ImageFolder` + `DataLoader(shuffle)` with
  `RandomResizedCrop`, `RandomHorizontalFlip`, `ColorJitter` on PIL images and
  `PILToTensor`: batches of uint8 (B, C, H, W), the same output (`ToTensor` + `Normalize`,
  float32, would add work on the torch side only).

Each configuration runs with 0 and `--workers` worker processes (grain `worker_count`,
torch `num_workers`). In each of `--rounds` rounds every configuration builds its loader,
takes `--warmup` images (worker start-up, first batches) and is then timed over the next
`--measure` images; a round's ratio is ltjax images/s over torch images/s at the same
worker count, so a change of load on the shared machine hits both sides of a ratio alike.
Reported: median images/s and the median ratio with its min-max spread over the rounds;
the CPU time of all the run's processes per timed image (/proc: user + system, every
thread and worker process), which other jobs on the machine change much less than the
wall time; and a profile of each stage in one thread (CPU ms per image).

Results: benchmarks/results/input_pipeline-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md. Needs torch and torchvision (imported lazily).

Usage (from the repository root):
  python -m benchmarks.input_pipeline
  python -m benchmarks.input_pipeline --num_images=500 --height=800 --width=1000 --rounds=3
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import grain
import numpy as np
from PIL import Image

from benchmarks import epoch_speed
from ltjax.data import pipeline
from ltjax.data.image_folder import decode_image


class Config(NamedTuple):
  """One pipeline of the comparison."""
  framework: str  # "ltjax" or "torch"
  sampler: str = "index"  # ltjax: "index" (shuffled IndexSampler), "class_law" or "stream"
  draft: bool = False  # ltjax: ImageFileSource(draft_size=size)


CONFIGS = {
    "torch": Config("torch"),
    "ltjax_index": Config("ltjax"),
    "ltjax_index_draft": Config("ltjax", draft=True),
    "ltjax_class_law": Config("ltjax", "class_law"),
    "ltjax_class_law_draft": Config("ltjax", "class_law", draft=True),
    "ltjax_stream": Config("ltjax", "stream"),
    "ltjax_stream_draft": Config("ltjax", "stream", draft=True),
}


STREAM_PASSES = 50  # passes over the files in the streamed path's one timed epoch


# --- The synthetic image folder --------------------------------------------------------------

def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A photo-like uint8 image: smooth random colour fields plus fine noise."""
  coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
  noise = rng.normal(0.0, 12.0, smooth.shape)
  return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def class_counts(num_images: int, num_classes: int, imbalance: float) -> np.ndarray:
  """Exponentially decaying counts n_k = n_0 imbalance^(-k/(K-1)) summing to num_images."""
  weights = imbalance ** (-np.arange(num_classes) / max(1, num_classes - 1))
  counts = np.maximum(1, np.floor(num_images * weights / weights.sum())).astype(int)
  counts[0] += num_images - counts.sum()
  return counts


def write_image_folder(root: str, args: argparse.Namespace) -> tuple[list[str], np.ndarray]:
  """Writes root/c<k>/<i>.jpg (JPEG quality `--quality`); returns (paths, labels)."""
  rng = np.random.default_rng(args.seed)
  paths, labels = [], []
  for k, n in enumerate(class_counts(args.num_images, args.num_classes, args.imbalance)):
    folder = os.path.join(root, f"c{k:03d}")
    os.makedirs(folder)
    for i in range(n):
      path = os.path.join(folder, f"{i:05d}.jpg")
      Image.fromarray(synthetic_image(rng, args.height, args.width)).save(
          path, "JPEG", quality=args.quality)
      paths.append(path)
      labels.append(k)
  return paths, np.asarray(labels, np.int32)


# --- The two pipelines -----------------------------------------------------------------------

def ltjax_batches(config: Config, paths: Sequence[str], labels: np.ndarray,
                  args: argparse.Namespace, workers: int, seed: int) -> Iterator[int]:
  """Sizes of the batches of ltjax's loader, endless."""
  source = pipeline.ImageFileSource(paths, labels,
                                    draft_size=args.size if config.draft else None)
  if config.sampler == "stream":
    return stream_batches(source, labels, args, workers, seed)
  if config.sampler == "class_law":
    sampler = pipeline.ClassLawSampler(labels, args.num_classes, "class_balanced", seed=seed)
  else:
    sampler = grain.samplers.IndexSampler(len(source), shuffle=True, seed=seed)
  loader = pipeline.make_loader(source, sampler, batch_size=args.batch_size,
                                transforms=pipeline.train_transforms(args.size, 0.4),
                                worker_count=workers)
  return (batch["image"].shape[0] for batch in loader)


def stream_batches(source: pipeline.ImageFileSource, labels: np.ndarray,
                   args: argparse.Namespace, workers: int, seed: int) -> Iterator[int]:
  """Sizes of the clean batches `stream.FeedStream` reads for training, endless.

  One long "epoch" of `STREAM_PASSES` shuffled passes over the files, so that the timing is
  the steady state of a real epoch (thousands of steps), not the start-up of grain's worker
  processes (`benchmarks/stream_epochs.py` times that).
  """
  from ltjax.data import stream  # pylint: disable=import-outside-toplevel
  data = stream.StreamedDataset(source, labels, args.num_classes,
                                transforms=tuple(pipeline.train_transforms(args.size, 0.4)),
                                worker_count=workers)
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(len(labels)) for _ in range(STREAM_PASSES)])
  steps = len(order) // args.batch_size
  rows = tuple(order[i * args.batch_size:(i + 1) * args.batch_size] for i in range(steps))
  plan = stream.EpochPlan(seed=seed, rows=rows, first_step=0, laws=(), refill=0)
  for fed in stream.FeedStream(data, lambda _: plan, 1, steps).feeds(0):
    yield fed.clean.images.shape[0]


def torch_batches(root: str, args: argparse.Namespace, workers: int, seed: int,
                  num_samples: int) -> Iterator[int]:
  """Sizes of the batches of torchvision's ImageFolder + DataLoader, num_samples images."""
  torch, datasets, transforms = require_torchvision()
  augment = transforms.Compose([
      transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(),
      transforms.ColorJitter(0.4, 0.4, 0.4), transforms.PILToTensor()])
  dataset = datasets.ImageFolder(root, transform=augment)
  generator = torch.Generator().manual_seed(seed)
  sampler = torch.utils.data.RandomSampler(dataset, num_samples=num_samples,
                                           generator=generator)
  loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                       num_workers=workers, drop_last=True)
  return (images.shape[0] for images, _ in loader)


def require_torchvision():
  """(torch, torchvision.datasets, torchvision.transforms), or exits with a message."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    from torchvision import datasets, transforms  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    sys.exit(f"benchmarks.input_pipeline needs torch and torchvision ({e}); "
             "pip install torch torchvision.")
  return torch, datasets, transforms


def tree_cpu_s(pid: int) -> float:
  """CPU seconds (user + system) of process `pid` and its live descendants (Linux /proc)."""
  total, stack = 0.0, [pid]
  while stack:
    p = stack.pop()
    try:
      with open(f"/proc/{p}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
      for task in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
          stack += [int(c) for c in f.read().split()]
    except FileNotFoundError:  # a process that ended meanwhile
      continue
  return total


def time_stream(batches: Iterator[int], warmup: int, measure: int) -> tuple[float, float]:
  """(images/s, CPU ms per image of all processes) over `measure` images after `warmup`."""
  taken = 0
  while taken < warmup:
    taken += next(batches)
  start, cpu, timed = time.perf_counter(), tree_cpu_s(os.getpid()), 0
  while timed < measure:
    timed += next(batches)
  cpu_ms = 1e3 * (tree_cpu_s(os.getpid()) - cpu) / timed
  return timed / (time.perf_counter() - start), cpu_ms


def run_config(name: str, data: tuple[str, list[str], np.ndarray], args: argparse.Namespace,
               workers: int, seed: int) -> tuple[float, float]:
  """(images/s, CPU ms per image) of configuration `name` with `workers` workers."""
  root, paths, labels = data
  config = CONFIGS[name]
  if config.framework == "torch":
    total = args.warmup + args.measure + 2 * args.batch_size * (workers + 1)
    batches = torch_batches(root, args, workers, seed, total)
  else:
    batches = ltjax_batches(config, paths, labels, args, workers, seed)
  measured = time_stream(batches, args.warmup, args.measure)
  batches.close()  # generators: ends the loaders (and their worker processes)
  return measured


# --- Per-stage profile (one process) ---------------------------------------------------------

def stage_profile(paths: Sequence[str], args: argparse.Namespace) -> dict[str, float]:
  """Median CPU ms per image of each stage, ltjax's and torchvision's, in this thread."""
  _, _, transforms = require_torchvision()
  files = [open(p, "rb").read() for p in paths[:args.profile_images]]  # pylint: disable=consider-using-with
  rng = np.random.default_rng(args.seed)
  crop, flip = pipeline.RandomResizedCrop(args.size), pipeline.RandomHorizontalFlip()
  jitter = pipeline.ColorJitter(0.4, 0.4, 0.4)
  tv = {"crop": transforms.RandomResizedCrop(args.size),
        "flip": transforms.RandomHorizontalFlip(), "jitter": transforms.ColorJitter(0.4, 0.4, 0.4),
        "to_tensor": transforms.PILToTensor()}
  times: dict[str, list[float]] = {}

  def timed(key: str, fn: Callable[[], Any]) -> Any:
    start = time.thread_time()
    out = fn()
    times.setdefault(key, []).append(1e3 * (time.thread_time() - start))
    return out

  def pil_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
      return image.convert("RGB")

  for data in files:
    element = {"image": timed("ltjax decode", lambda: decode_image(data, "x"))}
    timed("ltjax decode (draft)", lambda: decode_image(data, "x", draft_size=args.size))
    element = timed("ltjax crop", lambda: crop.random_map(element, rng))
    element = timed("ltjax flip", lambda: flip.random_map(element, rng))
    timed("ltjax jitter", lambda: jitter.random_map(element, rng))
    image = timed("torch decode", lambda: pil_decode(data))
    for key, transform in tv.items():
      image = timed(f"torch {key}", lambda: transform(image))  # pylint: disable=cell-var-from-loop
  return {key: float(np.median(v)) for key, v in times.items()}


# --- Orchestration and report ----------------------------------------------------------------

def benchmark(data: tuple[str, list[str], np.ndarray], args: argparse.Namespace
              ) -> dict[str, Any]:
  """`--rounds` alternating rounds of every configuration at every worker count."""
  rates: dict[str, dict[int, list[float]]] = {n: {w: [] for w in args.worker_list}
                                              for n in args.config_list}
  cpu_ms = {n: {w: [] for w in args.worker_list} for n in args.config_list}
  for r in range(args.rounds):
    for workers in args.worker_list:
      for name in args.config_list:
        rate, cpu = run_config(name, data, args, workers, args.seed + r)
        rates[name][workers].append(rate)
        cpu_ms[name][workers].append(cpu)
        print(f"round {r} workers {workers} {name:>22}: {rate:7.1f} images/s, "
              f"{cpu:5.2f} CPU ms/image", flush=True)
  summary = {}
  for name in args.config_list:
    for workers in args.worker_list:
      mine = rates[name][workers]
      entry = {"images_per_s": mine, "median_images_per_s": float(np.median(mine)),
               "cpu_ms_per_image": cpu_ms[name][workers],
               "median_cpu_ms_per_image": float(np.median(cpu_ms[name][workers]))}
      if "torch" in rates and name != "torch":
        ratios = [a / b for a, b in zip(mine, rates["torch"][workers])]
        entry.update(ratio_median=float(np.median(ratios)), ratio_min=min(ratios),
                     ratio_max=max(ratios))
      summary[f"{name}/w{workers}"] = entry
  return summary


def markdown(result: dict[str, Any]) -> str:
  args = result["args"]
  lines = epoch_speed.header_lines("input_pipeline", result["environment"], result["command"])
  lines += [f"- data: {args['num_images']} synthetic JPEGs (quality {args['quality']}) of "
            f"{args['height']} x {args['width']} px, {args['num_classes']} classes, in the page "
            f"cache; {result['cpu_count']} CPU cores (shared)",
            f"- pipeline: decode, RandomResizedCrop({args['size']}), flip, ColorJitter(0.4, "
            f"0.4, 0.4), batches of {args['batch_size']} uint8 images; {args['warmup']} images "
            f"of warm-up, then {args['measure']} timed; {args['rounds']} alternating rounds; "
            "ratio = ltjax / torch images/s at the same worker count (> 1: ltjax faster)", "",
            "| config | workers | images/s (median) | ratio ltjax/torch median [min, max] "
            "| CPU ms / image (all processes) |",
            "|---|---|---|---|---|"]
  for key, entry in result["configs"].items():
    name, workers = key.rsplit("/w", 1)
    ratio = (f"{entry['ratio_median']:.2f} [{entry['ratio_min']:.2f}, "
             f"{entry['ratio_max']:.2f}]" if "ratio_median" in entry else "")
    lines.append(f"| {name} | {workers} | {entry['median_images_per_s']:.1f} | {ratio} "
                 f"| {entry['median_cpu_ms_per_image']:.2f} |")
  lines += ["", "Per stage, one thread (median CPU ms per image):", "",
            "| stage | CPU ms |", "|---|---|"]
  lines += [f"| {k} | {v:.3f} |" for k, v in result["stage_ms"].items()]
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", default=",".join(CONFIGS),
                 help=f"comma-separated names of {list(CONFIGS)}")
  p.add_argument("--workers", default="0,2", help="comma-separated worker counts")
  p.add_argument("--num_images", type=int, default=500)
  p.add_argument("--num_classes", type=int, default=20)
  p.add_argument("--imbalance", type=float, default=10.0, help="largest / smallest class")
  p.add_argument("--height", type=int, default=400)
  p.add_argument("--width", type=int, default=500)
  p.add_argument("--quality", type=int, default=90, help="JPEG quality of the files")
  p.add_argument("--size", type=int, default=224, help="RandomResizedCrop output side")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--warmup", type=int, default=64, help="images before timing")
  p.add_argument("--measure", type=int, default=320, help="images timed")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--profile_images", type=int, default=100)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  args = p.parse_args(argv)
  args.config_list = [n for n in args.configs.split(",") if n]
  unknown = set(args.config_list) - set(CONFIGS)
  if unknown:
    p.error(f"unknown configs {sorted(unknown)}; valid: {', '.join(CONFIGS)}")
  args.worker_list = [int(w) for w in args.workers.split(",") if w]
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  require_torchvision()
  with tempfile.TemporaryDirectory(prefix="ltjax-input-bench-") as root:
    paths, labels = write_image_folder(root, args)
    stage_ms = stage_profile(paths, args)
    configs = benchmark((root, paths, labels), args)
  result = {"benchmark": "input_pipeline",
            "command": epoch_speed.command_line("benchmarks.input_pipeline"),
            "args": {k: v for k, v in vars(args).items()
                     if k not in ("config_list", "worker_list")},
            "environment": epoch_speed.environment(),
            "cpu_count": len(os.sched_getaffinity(0)), "configs": configs,
            "stage_ms": stage_ms}
  epoch_speed.publish("input_pipeline", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
