"""Host-fed training against the on-device path: steps/s of the same steps, in one run.

Both paths train the same recipe, model, batch size and seed on the same synthetic
CIFAR-10-LT-sized arrays (32 x 32 x 3 uint8, rho = 100): the in-memory path
(`recipe.DeviceDataset`, `loop="steps"`: one compiled call per step, the CPU default) and
the streamed path (`ltjax.data.stream.StreamedDataset` over `pipeline.ArraySource`, no host
transforms, grain reading steps ahead in threads; `ltjax.training.streamed`). Each round
trains one epoch of `--steps` steps on each path (compiled beforehand) and times it to the
last step's completion; the ratio streamed / in-memory steps/s is taken per round and its
median reported, so a change of load on the shared machine hits both sides alike.

What the streamed path adds per step: assembling the step's batches on the host (gather,
stack; decode and augmentation as well on real files, measured by
benchmarks/input_pipeline.py), and one host-to-device copy of them.

Results: benchmarks/results/stream_overhead-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.stream_overhead
  python -m benchmarks.stream_overhead --methods=erm,lobm --model=resnet32 --steps=10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from benchmarks import epoch_speed
from ltjax import augment, methods, recipe
from ltjax.data import pipeline, stream
from ltjax.models import get_model
from ltjax.training import loop, optim, schedules, streamed
from ltjax.training.state import create_state, run_keys


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default="erm,lobm", help="comma-separated METHODS")
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--read_threads", type=int, default=2)
  parser.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  return parser.parse_args(argv)


def make_epochs(name, model_name, images, labels, source, batch_size):
  """The in-memory and streamed epochs of one method, and a fresh-state factory."""
  rcp = methods.get_recipe(name, num_epochs=10)
  kind = "dual_" + model_name if rcp.requirements().branches == 2 else model_name
  model = get_model(kind, 10, head=rcp.requirements().head)
  tx = optim.sgd(schedules.constant(0.05), momentum=0.9)
  norm = augment.Normalize.of(augment.CIFAR_MEAN, augment.CIFAR_STD)
  on_device = loop.make_train_epoch(
      rcp, model.apply, tx, recipe.DeviceDataset.from_arrays(images, labels, 10),
      batch_size=batch_size, num_epochs=10, augment_fn=None, normalize_fn=norm, seed=0,
      loop="steps")
  fed = streamed.make_streamed_epoch(
      rcp, model.apply, tx, source, batch_size=batch_size, num_epochs=10, augment_fn=None,
      normalize_fn=norm, seed=0)
  counts = np.bincount(labels, minlength=10)

  def fresh():
    state = create_state(model, rcp, tx, norm(images[:1]), run_keys(0).init, counts)
    return streamed.with_bank(state, source, rcp, 0, mesh=None)

  return on_device, fed, fresh


def timed(run) -> float:
  start = time.perf_counter()
  state, metrics = run()
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start


def main(argv=None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  ds = epoch_speed.synthetic_cifar_lt(100.0, 0)
  num = args.steps * args.batch_size
  subset = np.random.default_rng(0).permutation(ds.train_labels.size)[:num]  # every class
  images, labels = ds.train_images[subset], ds.train_labels[subset]
  source = stream.StreamedDataset(pipeline.ArraySource(images, labels), labels, 10,
                                  read_threads=args.read_threads)
  rows = []
  for name in args.methods.split(","):
    on_device, fed, fresh = make_epochs(name, args.model, images, labels, source,
                                        args.batch_size)
    timed(lambda: on_device(fresh(), 0))  # compile both
    timed(lambda: fed(fresh(), 0))
    ratios, device_s, stream_s = [], [], []
    for _ in range(args.rounds):
      device_s.append(timed(lambda: on_device(fresh(), 0)))
      stream_s.append(timed(lambda: fed(fresh(), 0)))
      ratios.append(device_s[-1] / stream_s[-1])
    rows.append({"method": name, "device_steps_per_s": args.steps / statistics.median(device_s),
                 "stream_steps_per_s": args.steps / statistics.median(stream_s),
                 "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                 "ratio_max": max(ratios)})
    print(rows[-1], flush=True)
  env = epoch_speed.environment()
  command = "python -m benchmarks.stream_overhead " + " ".join(sys.argv[1:] if argv is None
                                                                else argv)
  lines = epoch_speed.header_lines("Host-fed (streamed) training against the on-device path",
                                   env, command)
  lines += [f"- {args.model}, batch {args.batch_size}, {args.steps} steps per epoch, "
            f"{args.rounds} rounds, {args.read_threads} read threads; ratio = streamed / "
            "in-memory steps/s (goal >= 0.9)", "",
            "| method | in memory steps/s | streamed steps/s | ratio (median, min-max) |",
            "|---|---|---|---|"]
  lines += [f"| {r['method']} | {r['device_steps_per_s']:.2f} | {r['stream_steps_per_s']:.2f} "
            f"| {r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |"
            for r in rows]
  path = epoch_speed.write_results("stream_overhead", {"env": env, "args": vars(args),
                                                       "rows": rows}, "\n".join(lines),
                                   args.results_dir)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
