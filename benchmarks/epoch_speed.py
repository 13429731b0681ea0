"""Seconds per training epoch of every ltjax method, with the epoch as one compiled call.

For each method of `ltjax.methods.METHODS` (or `--methods`) the run is assembled as
`experiments.runner` assembles it (the dataset config's recipe for that method, its model,
optimiser, augmentation and normalisation), the training set is put on the device and
`ltjax.training.loop.make_train_epoch` builds the epoch (one `lax.scan` over its steps).
Measured, per method:

  compile_s     `jit(...).lower(...).compile()` of the epoch (tracing + XLA compilation)
  first_call_s  the first call of the compiled epoch (allocation, autotuning, transfers)
  epoch_s       median over `--epochs` calls after `--warmup` more, each ended by
                `jax.block_until_ready` on the state and the metrics
  images_per_s  steps * batch / epoch_s
  vs_erm        epoch_s / epoch_s of ERM (ERM is always timed as the baseline)

Every timed call runs the recipe's last epoch (`--timing_epoch`, default num_epochs - 1),
where each method's full machinery is on (DRW weights, CP-Mix stage 2, LOBM* deferral,
OTmix pairs by OT with probability ((e + 1) / T)^mu = 1); the epoch is a traced argument,
so one compilation serves every epoch. CP-Mix's classifier fine-tuning phase is not timed.

Options: `--max_batch` doubles the batch from `--batch_size` until the device runs out of
memory (or the batch exceeds the training set) and reports the largest batch that fits and
its images/s; `--torch_reference` also times the PyTorch reference loop
(benchmarks/torch_reference.py) for ERM and Mixup on the same subset and reports the ratio.
`--steps_per_epoch` times a class-stratified subset of steps * batch images instead of the
whole set, for quick CPU runs. When the CIFAR-10 archive is missing, a synthetic
CIFAR-shaped long-tailed set with the same counts is timed instead and the results say so.

Results: benchmarks/results/epoch_speed-<device>-<date>.json, and a markdown section
appended to benchmarks/results/RESULTS.md (device, date, versions, command line, figures).

Usage (from the repository root):
  python -m benchmarks.epoch_speed                                   # CIFAR-10-LT, all methods
  python -m benchmarks.epoch_speed --methods=erm,mixup --torch_reference --max_batch
  python -m benchmarks.epoch_speed --dataset=digits_lt --model=small_cnn --epochs=2
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import shlex
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import runner
from ltjax import data as ltdata
from ltjax import longtail, reporting
from ltjax import methods as ltmethods
from ltjax import recipe as recipe_lib
from ltjax.training import loop, state as state_lib

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RESULTS_MD = os.path.join(RESULTS_DIR, "RESULTS.md")
REFERENCE_METHODS = ("erm", "mixup")
BASELINE = "erm"
_OOM_MARKERS = ("resource_exhausted", "out of memory", "oom")


# --- Shared by the three benchmark scripts -------------------------------------------------

def device_slug() -> str:
  """File-name form of the first device's kind, e.g. 'nvidia-h100-80gb-hbm3' or 'cpu'."""
  kind = jax.devices()[0].device_kind
  return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or jax.default_backend()


def command_line(module: str) -> str:
  """The command that ran this benchmark, as it can be pasted into a shell."""
  return " ".join(["python", "-m", module] + [shlex.quote(a) for a in sys.argv[1:]])


def environment() -> dict[str, Any]:
  """Versions and devices (`ltjax.reporting.environment_info`) plus the UTC time."""
  now = datetime.datetime.now(datetime.timezone.utc)
  return {**reporting.environment_info(), "utc": now.strftime("%Y-%m-%d %H:%M:%S")}


def write_results(name: str, payload: dict[str, Any], markdown: str,
                  results_dir: str = RESULTS_DIR) -> str:
  """Writes `<name>-<device>-<date>.json` and appends `markdown` to RESULTS.md.

  A second result of `name` in the same second gets `-2`, `-3`, ... after its date
  (never an overwrite of the first).

  Returns:
    The path of the JSON file.
  """
  os.makedirs(results_dir, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M%S")
  path = _reserve(os.path.join(results_dir, f"{name}-{device_slug()}-{stamp}"), ".json")
  reporting.write_json(path, payload)
  with open(os.path.join(results_dir, "RESULTS.md"), "a", encoding="utf-8") as f:
    f.write(markdown.rstrip() + "\n\n")
  return path


def _reserve(stem: str, suffix: str) -> str:
  """Creates (empty) and returns the first of `stem + suffix`, `stem-2 + suffix`, ... that
  does not exist yet: an exclusive create, so two writers never get the same name."""
  path, n = stem + suffix, 1
  while True:
    try:
      os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
      return path
    except FileExistsError:
      n += 1
      path = f"{stem}-{n}{suffix}"


def publish(name: str, payload: dict[str, Any], markdown: str,
            results_dir: str = RESULTS_DIR) -> str:
  """`write_results`, then prints `markdown` and the JSON file's path; returns the path."""
  path = write_results(name, payload, markdown, results_dir)
  print(markdown)
  print(f"wrote {path}")
  return path


def header_lines(title: str, env: dict[str, Any], command: str) -> list[str]:
  """The first lines of a RESULTS.md section: device, date, versions, command."""
  return [f"## {title}: {env['device_kind']} ({env['backend']}), {env['utc']} UTC", "",
          f"- versions: jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
          f"optax {env['optax']}, ltjax {env['ltjax']}, python {env['python']}",
          f"- devices: {env['device_count']} x {env['device_kind']}",
          f"- command: `{command}`"]


def synthetic_cifar_lt(rho: float, seed: int) -> ltdata.ArrayDataset:
  """Random uint8 32x32x3 images with CIFAR-10-LT's exponential class counts.

  Same shapes, dtype and counts as the real long-tailed set (12,406 images at rho=100), so
  the timing of a compiled epoch is the same; the accuracies would be meaningless.
  """
  counts = longtail.exponential_counts(5000, 10, rho)
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(10, dtype=np.int32), counts)
  images = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
  test_labels = np.arange(10, dtype=np.int32)
  return ltdata.ArrayDataset(images, labels, images[:10], test_labels,
                             tuple(f"class{k}" for k in range(10)),
                             meta={"source": "synthetic", "kind": "images", "rho": rho,
                                   "seed": seed, "counts": counts.tolist()})


def load_train_set(dataset: str, rho: float | None, seed: int, data_dir: str | None,
                   synthetic: bool = False) -> tuple[ltdata.ArrayDataset, str]:
  """The long-tailed training set, or the synthetic stand-in when CIFAR-10 is missing.

  Returns:
    (dataset, note), note saying where the images came from.
  """
  if synthetic or dataset == "synthetic_cifar10_lt":
    return synthetic_cifar_lt(100.0 if rho is None else rho, seed), "synthetic (forced)"
  try:
    ds = ltdata.get_dataset(dataset, rho=rho, seed=seed, data_dir=data_dir)
  except FileNotFoundError as err:
    if dataset != "cifar10_lt":
      raise
    note = (f"SYNTHETIC: the CIFAR-10 archive was not found ({str(err)[:160]}...); random "
            "CIFAR-shaped images with the CIFAR-10-LT counts were timed instead")
    print(note, file=sys.stderr)
    return synthetic_cifar_lt(100.0 if rho is None else rho, seed), note
  return ds, f"{dataset} from {ds.meta.get('source')}"


def stratified_subset(ds: ltdata.ArrayDataset, size: int) -> ltdata.ArrayDataset:
  """`size` training images keeping the class proportions (at least one per class).

  Class k keeps its first max(1, floor(n_k * size / N)) images; the rounding remainder
  goes to (or comes from) the largest class. The full set is returned when size >= N.
  """
  counts = ds.train_counts
  total = int(counts.sum())
  if size >= total:
    return ds
  if size < counts.size:
    raise ValueError(f"a subset needs at least one image per class ({counts.size}), "
                     f"got size {size}.")
  keep = np.maximum(1, counts * size // total)
  keep[np.argmax(counts)] += size - keep.sum()
  order = np.argsort(ds.train_labels, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  indices = np.sort(np.concatenate([order[s:s + k] for s, k in zip(starts, keep)]))
  return ds.select_train(indices, subset_of=total)


def train_set_for(ds: ltdata.ArrayDataset, steps_per_epoch: int | None,
                  batch_size: int) -> ltdata.ArrayDataset:
  """The whole set, or a stratified subset of steps * batch images (`--steps_per_epoch`)."""
  return ds if not steps_per_epoch else stratified_subset(ds, steps_per_epoch * batch_size)


def is_out_of_memory(err: BaseException) -> bool:
  return any(m in str(err).lower() for m in _OOM_MARKERS)


def block(tree: Any) -> Any:
  return jax.block_until_ready(tree)


# --- Assembling and timing one method ------------------------------------------------------

def method_config(dataset: str, method: str, rho: float | None, seed: int,
                  batch_size: int | None, model: str | None):
  """The experiment config of `method` on `dataset` (experiments/configs/<dataset>.py)."""
  config_name = "cifar10_lt" if dataset == "synthetic_cifar10_lt" else dataset
  module = importlib.import_module(f"experiments.configs.{config_name}")
  arg = f"method={method},seed={seed}" + ("" if rho is None else f",rho={rho}")
  config = module.get_config(arg)
  if batch_size:
    config.batch_size = batch_size
  if model:
    config.model.name = model
  return config


class Run(NamedTuple):
  """One assembled training run: compiled-epoch function, initial state, model."""
  epoch_fn: loop.TrainEpoch
  state: state_lib.TrainState
  model: Any
  model_name: str
  normalize_fn: Callable[[jax.Array], jax.Array]


def build_epoch(config, ds: ltdata.ArrayDataset, seed: int, loop_kind: str = "scan") -> Run:
  """Assembles one run as `experiments.runner` does (recipe, model, optimiser, data)."""
  rcp, model = runner.check_setup(config, ds.num_classes, ds.train_images.shape[1:])
  normalize_fn, _ = runner.normalizer(config, ds.train_images)
  tx = runner.build_phases(config, rcp, ds.train_labels.size)[0].tx
  data = recipe_lib.DeviceDataset.from_arrays(ds.train_images, ds.train_labels,
                                              ds.num_classes)
  epoch_fn = loop.make_train_epoch(
      rcp, model.apply, tx, data, batch_size=config.batch_size,
      num_epochs=config.num_epochs, augment_fn=runner.augmenter(config),
      normalize_fn=normalize_fn, seed=seed, loop=loop_kind)
  sample = np.zeros((1,) + ds.train_images.shape[1:], np.float32)
  state = state_lib.create_state(model, rcp, tx, sample, state_lib.run_keys(seed).init,
                                 ds.train_counts)
  return Run(epoch_fn, state, model, runner.model_name(config, rcp), normalize_fn)


def time_epoch(epoch_fn: loop.TrainEpoch, state: state_lib.TrainState, epoch: int,
               warmup: int, repeats: int) -> dict[str, Any]:
  """Compile time, first call and the median of `repeats` epochs after `warmup` more.

  Returns:
    dict with compile_s, first_call_s, epoch_s (median), epoch_times_s, final_loss and the
    trained `state` (for callers that need the parameters).
  """
  epoch = jnp.asarray(epoch, jnp.int32)
  if epoch_fn.step is None:  # loop "scan": the epoch is one compiled call
    start = time.perf_counter()
    compiled = epoch_fn.jitted.lower(epoch_fn.inputs, state, epoch_fn.data, epoch).compile()
    compile_s = time.perf_counter() - start
    run = lambda s: compiled(epoch_fn.inputs, s, epoch_fn.data, epoch)
  else:  # loop "steps": compilation happens in the first call
    compile_s, run = float("nan"), lambda s: epoch_fn(s, epoch)
  start = time.perf_counter()
  state, metrics = block(run(state))
  first_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = block(run(state))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = block(run(state))
    times.append(time.perf_counter() - start)
  loss = np.asarray(metrics["loss"])
  return {"compile_s": compile_s, "first_call_s": first_s,
          "epoch_s": float(np.median(times)), "epoch_times_s": times,
          "final_loss": float(loss.mean()), "finite": bool(np.isfinite(loss).all()),
          "state": state}


def time_method(method: str, ds: ltdata.ArrayDataset, args: argparse.Namespace,
                batch_size: int | None = None, repeats: int | None = None
                ) -> dict[str, Any]:
  """Times one method's epoch; the returned row is JSON-ready (no state)."""
  config = method_config(args.dataset, method, args.rho, args.seed,
                         batch_size or args.batch_size, args.model)
  train = train_set_for(ds, args.steps_per_epoch, config.batch_size)
  run = build_epoch(config, train, args.seed, args.loop)
  epoch_fn = run.epoch_fn
  epoch = config.num_epochs - 1 if args.timing_epoch < 0 else args.timing_epoch
  timing = time_epoch(epoch_fn, run.state, epoch, args.warmup,
                      args.epochs if repeats is None else repeats)
  del timing["state"]
  images = epoch_fn.steps_per_epoch * config.batch_size
  return {"method": method, "model": run.model_name, "batch_size": int(config.batch_size),
          "steps_per_epoch": epoch_fn.steps_per_epoch, "train_images": int(train.train_labels.size),
          "timing_epoch": int(epoch), "num_epochs": int(config.num_epochs), **timing,
          "images_per_s": images / timing["epoch_s"]}


def max_batch_search(method: str, ds: ltdata.ArrayDataset, args: argparse.Namespace,
                     log: Callable[[str], None]) -> dict[str, Any]:
  """Doubles the batch from --batch_size until out of memory or larger than the set."""
  config = method_config(args.dataset, method, args.rho, args.seed, args.batch_size,
                         args.model)
  batch, tried = int(config.batch_size), []
  while True:
    size = train_set_for(ds, args.steps_per_epoch, batch).train_labels.size
    if batch > size:
      stop = f"batch {batch} exceeds the training set ({size} images)"
      break
    try:
      row = time_method(method, ds, args, batch_size=batch, repeats=args.max_batch_repeats)
    except Exception as err:  # pylint: disable=broad-except
      if not is_out_of_memory(err):
        raise
      stop = f"out of memory at batch {batch}"
      break
    tried.append({k: row[k] for k in ("batch_size", "steps_per_epoch", "epoch_s",
                                      "images_per_s", "compile_s")})
    log(f"  max_batch {method}: B={batch} {row['epoch_s']:.3f} s/epoch "
        f"{row['images_per_s']:.0f} img/s")
    batch *= 2
    jax.clear_caches()
  best = max(tried, key=lambda r: r["batch_size"]) if tried else None
  return {"method": method, "largest_batch": best, "stopped": stop, "tried": tried}


# --- Report ----------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 3) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
  env, rows = result["environment"], result["methods"]
  lines = header_lines("epoch_speed", env, result["command"])
  lines += [f"- data: {result['data_note']}; {result['train_images']} training images, "
            f"class counts {result['class_counts']}",
            f"- timing: loop {result['args']['loop']!r} (scan: the epoch is one compiled "
            f"lax.scan; steps: one compiled call per step), recipe's epoch "
            f"{rows[0]['timing_epoch'] if rows else '-'}; median of {result['args']['epochs']} "
            f"epochs after {result['args']['warmup']} warm-up epoch(s) and the first call", "",
            "| method | model | batch | steps | compile s | first call s | s/epoch | images/s "
            "| x ERM | loss |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['model']} | {r['batch_size']} | {r['steps_per_epoch']} "
                 f"| {r['compile_s']:.1f} | {r['first_call_s']:.2f} | {r['epoch_s']:.3f} "
                 f"| {r['images_per_s']:.0f} | {_fmt(r.get('vs_erm'), 2)} "
                 f"| {r['final_loss']:.3f}{'' if r['finite'] else ' (non-finite)'} |")
  slow = [r["method"] for r in rows if (r.get("vs_erm") or 0) > result["goal_vs_erm"]]
  lines += ["", f"- goal every method <= {result['goal_vs_erm']}x ERM: "
            + (f"missed by {', '.join(slow)}" if slow else "met")]
  ref = result.get("torch_reference")
  if ref:
    lines += ["", "PyTorch reference loop (benchmarks/torch_reference.py): "
              + ref.get("note", "")]
    if "methods" in ref:
      lines += ["", "| method | torch s/epoch | ltjax s/epoch | speed-up (goal >= 10x) |",
                "|---|---|---|---|"]
      for m, r in ref["methods"].items():
        lines.append(f"| {m} | {r['epoch_s']:.3f} | {_fmt(r.get('ltjax_epoch_s'))} "
                     f"| {_fmt(r.get('speedup'), 2)} |")
  for search in result.get("max_batch", []):
    best = search["largest_batch"]
    lines += ["", f"Max batch ({search['method']}): largest that fits "
              f"{best['batch_size'] if best else '-'} "
              f"({_fmt(best['images_per_s'] if best else None, 0)} images/s); stopped: "
              f"{search['stopped']}.", "", "| batch | steps | s/epoch | images/s |",
              "|---|---|---|---|"]
    lines += [f"| {t['batch_size']} | {t['steps_per_epoch']} | {t['epoch_s']:.3f} "
              f"| {t['images_per_s']:.0f} |" for t in search["tried"]]
  return "\n".join(lines)


def torch_reference_rows(ds: ltdata.ArrayDataset, args: argparse.Namespace,
                         jax_rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Times the PyTorch reference for ERM and Mixup at ERM's batch size on the same images.

  Returns {"note"} alone when torch is missing.
  """
  from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
  batch = jax_rows[BASELINE]["batch_size"]
  train = train_set_for(ds, args.steps_per_epoch, batch)
  try:
    ref = torch_reference.time_reference(
        train, REFERENCE_METHODS, batch_size=batch, epochs=args.epochs,
        warmup=args.warmup, workers=args.torch_workers, device=args.torch_device)
  except ImportError as err:
    return {"note": f"not run: {err}"}
  model = jax_rows[BASELINE]["model"]
  if model != "resnet32":
    ref["note"] += (f"; WARNING: ltjax timed {model}, the reference is always ResNet-32, so "
                    "the speed-up compares different models")
  for method, row in ref["methods"].items():
    mine = jax_rows.get(method)
    if mine is not None:
      row["ltjax_epoch_s"] = mine["epoch_s"]
      row["speedup"] = row["epoch_s"] / mine["epoch_s"]
  return ref


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="cifar10_lt",
                 help="experiments/configs/<name>.py dataset (cifar10_lt, digits_lt, "
                      "fashion_mnist_lt) or synthetic_cifar10_lt")
  p.add_argument("--methods", default="all", help="comma-separated METHODS, or 'all'")
  p.add_argument("--model", default=None, help="model override (e.g. small_cnn)")
  p.add_argument("--batch_size", type=int, default=None, help="default: the config's (128)")
  p.add_argument("--rho", type=float, default=None, help="default: the config's")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data_dir", default=None, help="CIFAR archive or its folder")
  p.add_argument("--synthetic", action="store_true", help="time the synthetic set anyway")
  p.add_argument("--epochs", type=int, default=5, help="timed epochs (median)")
  p.add_argument("--warmup", type=int, default=1, help="untimed epochs after the first call")
  p.add_argument("--steps_per_epoch", type=int, default=None,
                 help="time a stratified subset of steps * batch images")
  p.add_argument("--timing_epoch", type=int, default=-1,
                 help="recipe epoch the timed calls run (-1: the last)")
  p.add_argument("--max_batch", action="store_true", help="largest batch that fits")
  p.add_argument("--max_batch_methods", default=BASELINE)
  p.add_argument("--max_batch_repeats", type=int, default=2)
  p.add_argument("--torch_reference", action="store_true",
                 help="also time benchmarks/torch_reference.py (ERM, Mixup)")
  p.add_argument("--torch_workers", type=int, default=4, help="DataLoader workers")
  p.add_argument("--torch_device", default="auto", help="auto, cuda or cpu")
  p.add_argument("--goal_vs_erm", type=float, default=1.3)
  p.add_argument("--loop", default="scan", choices=("scan", "steps", "auto"),
                 help="epoch loop (ltjax.training.loop): 'steps' avoids XLA:CPU's slow "
                      "convolutions inside lax.scan")
  p.add_argument("--results_dir", default=RESULTS_DIR)
  args = p.parse_args(argv)
  names = ltmethods.METHODS if args.methods == "all" else tuple(
      m.strip() for m in args.methods.split(",") if m.strip())
  unknown = [m for m in names if m not in ltmethods.METHODS]
  if unknown:
    p.error(f"unknown methods {unknown}; valid: {', '.join(ltmethods.METHODS)}")
  args.method_list = (BASELINE,) + tuple(m for m in names if m != BASELINE)
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  log = lambda msg: print(msg, flush=True)
  env = environment()
  ds, note = load_train_set(args.dataset, args.rho, args.seed, args.data_dir, args.synthetic)
  log(f"{env['device_kind']}: {note}; {ds.train_labels.size} images, counts "
      f"{ds.train_counts.tolist()}")
  rows = {}
  for method in args.method_list:
    row = time_method(method, ds, args)
    row["vs_erm"] = row["epoch_s"] / rows[BASELINE]["epoch_s"] if rows else 1.0
    rows[method] = row
    log(f"{method:>16}: compile {row['compile_s']:6.1f} s  first {row['first_call_s']:6.2f} s"
        f"  {row['epoch_s']:.3f} s/epoch  {row['images_per_s']:8.0f} img/s  "
        f"x{row['vs_erm']:.2f} ERM  loss {row['final_loss']:.3f}")
    jax.clear_caches()
  result = {"benchmark": "epoch_speed", "command": command_line("benchmarks.epoch_speed"),
            "args": {k: v for k, v in vars(args).items() if k != "method_list"},
            "environment": env, "data_note": note, "train_images": int(ds.train_labels.size),
            "class_counts": ds.train_counts.tolist(), "goal_vs_erm": args.goal_vs_erm,
            "methods": list(rows.values())}
  if args.max_batch:
    result["max_batch"] = [max_batch_search(m.strip(), ds, args, log)
                           for m in args.max_batch_methods.split(",")]
  if args.torch_reference:
    result["torch_reference"] = torch_reference_rows(ds, args, rows)
    log(f"torch reference: {json.dumps(result['torch_reference'], default=str)[:600]}")
  text = markdown(result)
  path = write_results("epoch_speed", result, text, args.results_dir)
  log(text)
  log(f"wrote {path} and appended to {os.path.join(args.results_dir, 'RESULTS.md')}")
  return result


if __name__ == "__main__":
  main()
