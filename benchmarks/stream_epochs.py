"""The streamed path's epoch boundaries: one grain pipeline per phase against one per epoch.

`ltjax.data.stream.FeedStream` reads a phase's epochs through one grain pipeline, so its
worker processes start once and its read-ahead carries over the epoch boundaries. Before,
every epoch (and every mid-epoch checkpoint segment) opened a new pipeline: new worker
processes, each unpickling the reader, and an empty read-ahead. This benchmark reads the
same `--epochs` epochs of `--steps` steps of JPEG files (the ImageNet-LT training
augmentation, `--workers` worker processes) both ways in one run:

- `per_epoch`: a new `FeedStream` per epoch, closed at its end (the former behaviour);
- `persistent`: one `FeedStream` for all epochs.

Each round times both (alternating, so a change of load on the shared machine hits both)
from the first request to the last feed; reported: seconds per epoch (median over rounds)
and the time saved per epoch boundary, (per_epoch - persistent) / (epochs - 1).

Results: benchmarks/results/stream_epochs-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.stream_epochs
  python -m benchmarks.stream_epochs --epochs=6 --steps=8 --workers=2 --rounds=3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from benchmarks import epoch_speed, input_pipeline
from ltjax.data import pipeline, stream


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=6)
  parser.add_argument("--steps", type=int, default=8, help="steps per epoch")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--num_images", type=int, default=300)
  parser.add_argument("--num_classes", type=int, default=20)
  parser.add_argument("--imbalance", type=float, default=10.0)
  parser.add_argument("--height", type=int, default=400)
  parser.add_argument("--width", type=int, default=500)
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  return parser.parse_args(argv)


def epoch_plans(labels: np.ndarray, args: argparse.Namespace):
  """`plan(epoch)`: `--steps` shuffled clean batches of the epoch (ERM's reads)."""
  def plan(epoch: int) -> stream.EpochPlan:
    order = np.random.default_rng([args.seed, epoch]).permutation(labels.size)
    order = np.resize(order, args.steps * args.batch_size).reshape(args.steps, -1)
    return stream.EpochPlan(seed=args.seed, rows=tuple(order), first_step=epoch * args.steps,
                            laws=(), refill=0)
  return plan


def read_epochs(data: stream.StreamedDataset, plan, args: argparse.Namespace,
                persistent: bool) -> float:
  """Seconds to read `--epochs` epochs, one pipeline for all or one per epoch."""
  start = time.perf_counter()
  feeds = stream.FeedStream(data, plan, args.epochs, args.steps)
  for epoch in range(args.epochs):
    if not persistent:
      feeds.close()
      feeds = stream.FeedStream(data, plan, args.epochs, args.steps)
    for fed in feeds.feeds(epoch):
      assert fed.clean.images.shape[0] == args.batch_size
  feeds.close()
  return time.perf_counter() - start


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
  with tempfile.TemporaryDirectory() as root:
    paths, labels = input_pipeline.write_image_folder(root, args)
    data = stream.StreamedDataset(
        pipeline.ImageFileSource(paths, labels), labels, args.num_classes,
        transforms=tuple(pipeline.train_transforms(args.size, 0.4)),
        worker_count=args.workers)
    plan = epoch_plans(labels, args)
    seconds = {"per_epoch": [], "persistent": []}
    for _ in range(args.rounds):
      for name in seconds:
        seconds[name].append(read_epochs(data, plan, args, name == "persistent"))
        print(name, f"{seconds[name][-1]:.2f} s", flush=True)
  median = {name: statistics.median(s) for name, s in seconds.items()}
  return {"seconds": seconds, "per_epoch_s": {k: v / args.epochs for k, v in median.items()},
          "saved_per_boundary_s": (median["per_epoch"] - median["persistent"])
                                  / max(args.epochs - 1, 1)}


def markdown(result: dict[str, Any], args: argparse.Namespace, env: dict[str, Any],
             command: str) -> str:
  lines = epoch_speed.header_lines("stream_epochs", env, command)
  per_epoch, persistent = (result["per_epoch_s"][k] for k in ("per_epoch", "persistent"))
  lines += [
      f"- data: {args.num_images} synthetic JPEGs of {args.height} x {args.width} px, "
      f"{args.num_classes} classes; RandomResizedCrop({args.size}), flip, ColorJitter(0.4); "
      f"{args.epochs} epochs of {args.steps} steps of {args.batch_size}, {args.workers} "
      f"worker processes, {args.rounds} alternating rounds (median)", "",
      "| pipeline | s / epoch | images/s |", "|---|---|---|",
      *(f"| {name} | {s:.3f} | {args.steps * args.batch_size / s:.1f} |"
        for name, s in (("one per epoch", per_epoch), ("one per phase", persistent))),
      "", f"Saved per epoch boundary: {result['saved_per_boundary_s']:.2f} s."]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  result = benchmark(args)
  env = epoch_speed.environment()
  command = "python -m benchmarks.stream_epochs " + " ".join(argv)
  path = epoch_speed.write_results("stream_epochs", {"env": env, "args": vars(args), **result},
                                   markdown(result, args, env, command), args.results_dir)
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
