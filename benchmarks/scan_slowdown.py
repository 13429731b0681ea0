"""Why a conv-net step is 10-20x slower inside `lax.scan` than jitted alone on XLA:CPU.

Minimal reproduction: a few conv + batch-norm layers, softmax cross-entropy and SGD on a
dataset held as an argument (the batch gathered by indices inside the step, as ltjax's
engine does), run S steps three ways:

  steps  the step jitted alone, called S times from a host loop without waiting in between
         (ltjax's loop="steps"); blocked once at the end
  scan   the S steps as one jitted `lax.scan` (ltjax's loop="scan")
  fori   the S steps as one jitted `lax.fori_loop`

each with `lax.conv_general_dilated` ("lax") and with benchmarks/conv_vjp.py's convolution
("custom_vjp": same forward, gradients written as canonical NHWC/HWIO convolutions).
Reported per case: compile seconds, median milliseconds per step over `--repeats` rounds
that time one call of every case in turn (after one untimed call), and in the optimised HLO the number of non-canonical
convolutions (XLA:CPU runs those as naive loops) and of copies of the dataset buffer.

Every XLA flag set of `--flag_sets` runs in its own subprocess (XLA_FLAGS are read once,
when the CPU backend starts), so the same script bisects the XLA:CPU options. The finding:
`ConvCanonicalization` only visits the entry computation, so the gradient convolutions of
a step inside a while loop stay non-canonical; the custom_vjp convolution removes the gap
(benchmarks/conv_vjp.py's docstring; benchmarks/README.md).

`--resnet32_batch` (0 to skip) also times ltjax's real ERM epoch on ResNet-32
(`make_train_epoch`, a synthetic CIFAR-10-LT subset of `--resnet32_steps` batches) with
loop "scan" and "steps", with ltjax's convolution and with the custom_vjp one.

Results: benchmarks/results/scan_slowdown-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.scan_slowdown
  python -m benchmarks.scan_slowdown --flag_sets=default --resnet32_batch=0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import conv_vjp, epoch_speed, worker

FLAG_SETS = {
    "default": "",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "onednn": "--xla_cpu_use_onednn=true",
    "copy_region_analysis": "--xla_cpu_copy_insertion_use_region_analysis=true",
    "old_runtime": "--xla_cpu_use_thunk_runtime=false",
}
CONVS = {"lax": lax.conv_general_dilated, "custom_vjp": conv_vjp.conv_general_dilated}
MODES = ("steps", "scan", "fori")


# --- The minimal conv net -------------------------------------------------------------------

def init_params(key: jax.Array, channels: int, layers: int, num_classes: int
                ) -> dict[str, Any]:
  """3x3 convolutions (HWIO), batch-norm scales / offsets and a linear head."""
  keys = jax.random.split(key, layers + 1)
  convs = [jax.random.normal(k, (3, 3, 3 if i == 0 else channels, channels)) * 0.2
           for i, k in enumerate(keys[:-1])]
  return {"convs": convs, "scale": [jnp.ones(channels)] * layers,
          "offset": [jnp.zeros(channels)] * layers,
          "head": jax.random.normal(keys[-1], (channels, num_classes)) * 0.1}


def make_loss(conv: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """Cross-entropy of conv -> batch norm (batch statistics) -> relu, pooled, linear."""
  def loss(params: dict[str, Any], x: jax.Array, labels: jax.Array) -> jax.Array:
    for kernel, scale, offset in zip(params["convs"], params["scale"], params["offset"]):
      x = conv(x, kernel, (1, 1), ((1, 1), (1, 1)),
               dimension_numbers=conv_vjp.DIMENSION_NUMBERS)
      mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
      x = jax.nn.relu((x - mean) * lax.rsqrt(var + 1e-5) * scale + offset)
    logits = x.mean((1, 2)) @ params["head"]
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
    return -picked.mean()

  return loss


def make_step(conv: Callable[..., jax.Array], lr: float = 0.05) -> Callable[..., Any]:
  """`step(params, images, labels, indices) -> (params, loss)`: gather, SGD on one batch."""
  loss_fn = make_loss(conv)

  def step(params, images, labels, indices):
    loss, grads = jax.value_and_grad(loss_fn)(params, images[indices], labels[indices])
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss

  return step


def make_runners(step: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
  """The three loops over the rows of `perm` (S, B); each returns (params, losses (S,))."""
  jitted = jax.jit(step)

  def steps(params, images, labels, perm):
    losses = []
    for indices in perm:  # one device-side unstack, as ltjax's loop="steps"
      params, loss = jitted(params, images, labels, indices)
      losses.append(loss)
    return params, jnp.stack(losses)

  @jax.jit
  def scan(params, images, labels, perm):
    return lax.scan(lambda p, idx: step(p, images, labels, idx), params, perm)

  @jax.jit
  def fori(params, images, labels, perm):
    def body(t, carry):
      p, losses = carry
      p, loss = step(p, images, labels, perm[t])
      return p, losses.at[t].set(loss)
    return lax.fori_loop(0, perm.shape[0], body, (params, jnp.zeros(perm.shape[0])))

  return {"steps": steps, "scan": scan, "fori": fori}


def hlo_counts(fn: Callable[..., Any], args: tuple[Any, ...], dataset_shape: tuple[int, ...]
               ) -> dict[str, Any]:
  """Non-canonical convolutions and copies of a dataset-shaped buffer in the optimised HLO."""
  text = fn.lower(*args).compile().as_text()
  odd, total = conv_vjp.non_canonical_convolutions(text)
  shape = "f32[" + ",".join(map(str, dataset_shape)) + "]"
  copies = sum(f"= {shape}" in line and " copy(" in line for line in text.splitlines())
  return {"non_canonical_convs": odd, "convs": total, "dataset_copies": copies}


def time_calls(run: Callable[[], Any], repeats: int) -> list[float]:
  """Seconds of `repeats` calls after an untimed one, each blocked until ready."""
  jax.block_until_ready(run())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return times


def prepare_case(conv_name: str, mode: str, args: argparse.Namespace, dataset_images: int
                 ) -> tuple[dict[str, Any], Callable[[], Any]]:
  """One (convolution, loop) case: its row (compile seconds, HLO counts) and its call."""
  key = jax.random.PRNGKey(args.seed)
  k_img, k_lab, k_par, k_perm = jax.random.split(key, 4)
  size = args.image_size
  images = jax.random.normal(k_img, (dataset_images, size, size, 3))
  labels = jax.random.randint(k_lab, (dataset_images,), 0, 10)
  perm = jax.random.permutation(k_perm, dataset_images)[:args.steps * args.batch_size]
  perm = perm.reshape(args.steps, args.batch_size)
  params = init_params(k_par, args.channels, args.layers, 10)
  step = make_step(CONVS[conv_name])
  runner = make_runners(step)[mode]
  # loop "steps" compiles the step alone; the others compile the whole loop
  compiled_fn, compiled_args = ((jax.jit(step), (params, images, labels, perm[0]))
                                if mode == "steps" else (runner, (params, images, labels, perm)))
  start = time.perf_counter()
  compiled = compiled_fn.lower(*compiled_args).compile()
  row = {"conv": conv_name, "mode": mode, "dataset_images": dataset_images,
         "compile_s": time.perf_counter() - start,
         **hlo_counts(compiled_fn, compiled_args, images.shape)}
  if mode != "steps":
    runner = compiled
  return row, lambda: runner(params, images, labels, perm)


def time_cases(cases: list[tuple[dict[str, Any], Callable[[], Any]]], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
  """Times the cases interleaved: one call of each per round, `--repeats` rounds.

  Interleaving keeps a change of load on a shared machine from favouring one case.
  """
  rows = [dict(row, call_times_s=[]) for row, _ in cases]
  outputs = [jax.block_until_ready(run()) for _, run in cases]  # first call, untimed
  for _ in range(args.repeats):
    for row, (_, run) in zip(rows, cases):
      start = time.perf_counter()
      jax.block_until_ready(run())
      row["call_times_s"].append(time.perf_counter() - start)
  for row, (_, losses) in zip(rows, outputs):
    row["ms_per_step"] = 1e3 * float(np.median(row["call_times_s"])) / args.steps
    row["final_loss"] = float(np.asarray(losses)[-1])
  return rows


def dispatch_overhead(args: argparse.Namespace) -> dict[str, float]:
  """Microseconds per call of a jitted no-op update on the minimal net's parameters.

  The host-side cost of one more jitted call (argument handling, dispatch): what loop
  "steps" pays per step on top of the computation, with nothing to overlap it.
  """
  params = init_params(jax.random.PRNGKey(0), args.channels, args.layers, 10)
  bump = jax.jit(lambda p: jax.tree.map(lambda a: a + 1.0, p))
  scanned = jax.jit(lambda p: lax.scan(lambda c, _: (bump(c), None), p, None,
                                       length=args.dispatch_calls)[0])
  calls = args.dispatch_calls

  def host_loop():
    p = params
    for _ in range(calls):
      p = bump(p)
    return p

  loop_times, scan_times = (time_calls(run, args.repeats)
                            for run in (host_loop, lambda: scanned(params)))
  leaves = len(jax.tree.leaves(params))
  return {"leaves": leaves, "calls": calls,
          "host_loop_us_per_call": 1e6 * float(np.median(loop_times)) / calls,
          "scan_us_per_iteration": 1e6 * float(np.median(scan_times)) / calls}


def measure(args: argparse.Namespace) -> dict[str, Any]:
  """All cases under the XLA_FLAGS this process was started with."""
  small = args.steps * args.batch_size
  cases = [prepare_case(conv_name, mode, args, small) for conv_name in CONVS for mode in MODES]
  cases += [prepare_case("custom_vjp", mode, args, small * args.dataset_factor)
            for mode in ("steps", "scan")]
  rows = time_cases(cases, args)
  for row in rows:
    print(f"  {row['conv']:>10} {row['mode']:>5} {row['dataset_images']:>5} images: "
          f"{row['ms_per_step']:8.2f} ms/step", file=sys.stderr, flush=True)
  return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows,
          "dispatch": dispatch_overhead(args)}


# --- ResNet-32 through ltjax's engine -------------------------------------------------------

def resnet32_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
  """ltjax's ERM epoch on ResNet-32: loop scan / steps x lax / custom_vjp convolution.

  Each epoch runs through the public `TrainEpoch.__call__`; the first call compiles.
  """
  batch = args.resnet32_batch
  ds = epoch_speed.stratified_subset(epoch_speed.synthetic_cifar_lt(100.0, args.seed),
                                     args.resnet32_steps * batch)
  config = epoch_speed.method_config("cifar10_lt", "erm", None, args.seed, batch, None)
  epoch = jnp.asarray(config.num_epochs - 1, jnp.int32)
  rows = []
  for conv_name in CONVS:
    for loop_kind in ("steps", "scan"):
      context = (conv_vjp.use_in_resnet_cifar() if conv_name == "custom_vjp"
                 else contextlib.nullcontext())
      with context:
        run = epoch_speed.build_epoch(config, ds, args.seed, loop_kind)
        state, times = run.state, []
        for _ in range(1 + args.resnet32_repeats):
          start = time.perf_counter()
          state, metrics = jax.block_until_ready(run.epoch_fn(state, epoch))
          times.append(time.perf_counter() - start)
      steps = run.epoch_fn.steps_per_epoch
      rows.append({"conv": conv_name, "loop": loop_kind, "batch_size": batch,
                   "steps_per_epoch": steps, "first_call_s": times[0],
                   "epoch_times_s": times[1:],
                   "ms_per_step": 1e3 * float(np.median(times[1:])) / steps,
                   "final_loss": float(metrics["loss"][-1])})
      print(f"  resnet32 {conv_name:>10} {loop_kind:>5}: {rows[-1]['ms_per_step']:8.1f} "
            f"ms/step", file=sys.stderr, flush=True)
      jax.clear_caches()
  return rows


# --- Orchestration and report ---------------------------------------------------------------

def run_flag_set(name: str, argv: Sequence[str]) -> dict[str, Any]:
  """Runs the worker in a subprocess with FLAG_SETS[name] as XLA_FLAGS."""
  env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name]}
  cmd = [sys.executable, "-m", "benchmarks.scan_slowdown", "--worker", *argv]
  try:
    return worker.run(cmd, env)
  except worker.WorkerFailed as err:
    return {"xla_flags": FLAG_SETS[name], "error": str(err)}


def _ms(rows: list[dict[str, Any]], conv: str, mode: str, images: int | None = None
        ) -> dict[str, Any]:
  return next(r for r in rows if r["conv"] == conv and r["mode"] == mode
              and (images is None or r["dataset_images"] == images))


def markdown(result: dict[str, Any]) -> str:
  args = result["args"]
  lines = epoch_speed.header_lines("scan_slowdown", result["environment"], result["command"])
  lines += [f"- net: {args['layers']} x (3x3 conv {args['channels']} ch + batch norm + relu), "
            f"pool, linear, SGD; batch {args['batch_size']}, {args['image_size']}x"
            f"{args['image_size']}x3 inputs, {args['steps']} steps per call; median of "
            f"{args['repeats']} rounds timing one call of every case (interleaved), after an "
            "untimed first call; non-canonical: convolutions in the optimised "
            "HLO that are not `b01f_01io->b01f` (XLA:CPU emits those as naive loops)", "",
            "| XLA_FLAGS | conv | steps ms/step | scan ms/step | fori ms/step | scan / steps "
            "| non-canonical convs (steps / scan) |", "|---|---|---|---|---|---|---|"]
  small = args["steps"] * args["batch_size"]
  for name, res in result["flag_sets"].items():
    if "error" in res:
      lines.append(f"| `{res['xla_flags']}` ({name}) | failed: {res['error'][-200:]!r} "
                   "| | | | | |")
      continue
    for conv in CONVS:
      s, c, f = (_ms(res["rows"], conv, m, small) for m in MODES)
      lines.append(f"| `{res['xla_flags'] or '(none)'}` | {conv} | {s['ms_per_step']:.2f} "
                   f"| {c['ms_per_step']:.2f} | {f['ms_per_step']:.2f} "
                   f"| {c['ms_per_step'] / s['ms_per_step']:.1f} "
                   f"| {s['non_canonical_convs']} / {c['non_canonical_convs']} "
                   f"of {c['convs']} |")
  default = result["flag_sets"].get("default", {})
  if "rows" in default:
    rows, big = default["rows"], small * args["dataset_factor"]
    lines += ["", "Loop-carried dataset (custom_vjp conv, default flags): copies of the "
              "dataset buffer in the optimised HLO and ms/step with a "
              f"{args['dataset_factor']}x larger dataset (same steps):", "",
              "| dataset images | steps ms/step | scan ms/step | dataset copies (scan) |",
              "|---|---|---|---|"]
    for images in (small, big):
      s, c = _ms(rows, "custom_vjp", "steps", images), _ms(rows, "custom_vjp", "scan", images)
      lines.append(f"| {images} | {s['ms_per_step']:.2f} | {c['ms_per_step']:.2f} "
                   f"| {c['dataset_copies']} |")
    d = default["dispatch"]
    lines += ["", f"Dispatch (default flags): a jitted no-op update of the net's "
              f"{d['leaves']} parameter arrays costs {d['host_loop_us_per_call']:.0f} us per "
              f"call from a host loop against {d['scan_us_per_iteration']:.0f} us per "
              f"iteration of a scan ({d['calls']} calls)."]
  if result.get("resnet32"):
    lines += ["", "ResNet-32 through ltjax's engine (ERM, `make_train_epoch`, synthetic "
              "CIFAR-10-LT subset; median epoch / steps):", "",
              "| conv | loop | batch | steps | first call s (compiles) | ms/step | loss |",
              "|---|---|---|---|---|---|---|"]
    for r in result["resnet32"]:
      lines.append(f"| {r['conv']} | {r['loop']} | {r['batch_size']} | {r['steps_per_epoch']} "
                   f"| {r['first_call_s']:.1f} | {r['ms_per_step']:.0f} "
                   f"| {r['final_loss']:.3f} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--flag_sets", default=",".join(FLAG_SETS),
                 help=f"comma-separated names of {list(FLAG_SETS)}")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--image_size", type=int, default=16)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--layers", type=int, default=3)
  p.add_argument("--steps", type=int, default=8, help="steps per timed call")
  p.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
  p.add_argument("--dataset_factor", type=int, default=8,
                 help="the larger dataset of the loop-carried-dataset check, in x steps*B")
  p.add_argument("--dispatch_calls", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--resnet32_batch", type=int, default=32, help="0: skip ResNet-32")
  p.add_argument("--resnet32_steps", type=int, default=2)
  p.add_argument("--resnet32_repeats", type=int, default=1)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  unknown = set(args.flag_sets.split(",")) - set(FLAG_SETS)
  if unknown:
    p.error(f"unknown flag sets {sorted(unknown)}; valid: {', '.join(FLAG_SETS)}")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.worker:
    result = measure(args)
    worker.report(result)
    return result
  worker_argv = [a for a in argv if not a.startswith("--flag_sets")]
  flag_sets = {}
  for name in args.flag_sets.split(","):
    print(f"flag set {name}: XLA_FLAGS={FLAG_SETS[name]!r}", flush=True)
    flag_sets[name] = run_flag_set(name, worker_argv)
  result = {"benchmark": "scan_slowdown", "command": epoch_speed.command_line(
      "benchmarks.scan_slowdown"), "args": {k: v for k, v in vars(args).items()
                                            if k != "worker"},
            "environment": epoch_speed.environment(), "flag_sets": flag_sets,
            "resnet32": resnet32_cases(args) if args.resnet32_batch else []}
  epoch_speed.publish("scan_slowdown", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
