"""One ResNet-32 training step on XLA:CPU against the PyTorch reference step, in one run.

ltjax's real ERM step (`make_train_epoch(loop="steps")` as benchmarks/epoch_speed.py builds
it from experiments/configs/cifar10_lt.py: gather, random crop + flip and normalisation on
the device, forward, cross-entropy, gradient, SGD with momentum and weight decay, BatchNorm
statistics) and the reference step of benchmarks/torch_reference.py (its ResNet-32,
`CrossEntropyLoss`, SGD lr 0.1 / momentum 0.9 / wd 2e-4, `loss.item()`) on a fixed,
already normalised NCHW batch (the reference augments in DataLoader workers, outside the
step), both at `--batch_size` (128) on a synthetic CIFAR-10-LT set (step time does not
depend on the pixels).

Each variant runs in its own subprocess (XLA_FLAGS are read once, when the backend
starts). In it, `--rounds` rounds each run one ltjax epoch of `--steps` steps (a
class-stratified subset of steps x batch images, through the public
`TrainEpoch.__call__`: the steps dispatched back to back and waited for at the end, as
ltjax trains) and then `--steps` torch steps (each ending in `loss.item()`); a round's
ratio is torch ms per step (median) / ltjax ms per step, so > 1 means ltjax is faster, and
a change of load on the shared machine hits both sides of a ratio alike. Reported: the
median ratio over the rounds and its min-max spread, ms per step, images/s, and ltjax's
dispatch time per step (host seconds between two step dispatches, from the `on_step` hook).

Variants (`--variants`, default all): XLA:CPU options (XNNPACK off, oneDNN, single-threaded
Eigen, fast math, XNNPACK graph fusion), one CPU core for both frameworks (affinity), no
augmentation in ltjax's step, and benchmarks/conv_vjp.py's convolution (the proposed ltjax
change that makes `lax.scan` usable on CPU). `--xla_force_host_platform_device_count` is
deliberately not used.

Results: benchmarks/results/cpu_step-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.cpu_step
  python -m benchmarks.cpu_step --variants=default,custom_vjp_conv --rounds=3 --steps=3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import conv_vjp, epoch_speed, torch_reference, worker



class Variant(NamedTuple):
  """One setting of the comparison."""
  description: str
  xla_flags: str = ""
  conv: str = "lax"  # "lax" or "custom_vjp" (benchmarks/conv_vjp.py)
  augment: bool = True
  cores: int | None = None  # CPU affinity of the subprocess (None: all cores)


VARIANTS = {
    "default": Variant("ltjax as it is"),
    "no_xnnpack": Variant("Eigen instead of XNNPACK/YNNPACK kernels",
                          "--xla_cpu_use_xnnpack=false"),
    "onednn": Variant("oneDNN convolution / matmul thunks", "--xla_cpu_use_onednn=true"),
    "eigen_single_thread": Variant("Eigen calls single-threaded",
                                   "--xla_cpu_multi_thread_eigen=false"),
    "fast_math": Variant("unsafe fast math", "--xla_cpu_enable_fast_math=true"),
    "xnn_graph_fusion": Variant(
        "greedy XNNPACK subgraph fusion",
        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    "one_core": Variant("both frameworks on one core (affinity)", cores=1),
    "no_augment": Variant("ltjax step without the on-device crop + flip", augment=False),
    "custom_vjp_conv": Variant("benchmarks/conv_vjp.py convolution (scan-safe gradients)",
                               conv="custom_vjp"),
}


# --- Worker: one variant ---------------------------------------------------------------------

def ltjax_epoch(args: argparse.Namespace, variant: Variant):
  """ltjax's ERM epoch of `--steps` steps (loop "steps") and its first state.

  Returns:
    (run, state): `run(state) -> (state, loss, dispatch_s)` runs one epoch through the
    public `TrainEpoch.__call__`, dispatch_s being the host seconds between successive
    step dispatches (its `on_step` hook), and the initial train state.
  """
  ds = epoch_speed.stratified_subset(epoch_speed.synthetic_cifar_lt(100.0, args.seed),
                                     args.steps * args.batch_size)
  config = epoch_speed.method_config("cifar10_lt", "erm", None, args.seed, args.batch_size,
                                     None)
  if not variant.augment:
    config.augment.pad, config.augment.flip = 0, False
  built = epoch_speed.build_epoch(config, ds, args.seed, "steps")
  epoch = jnp.asarray(config.num_epochs - 1, jnp.int32)

  def run(state):
    marks = [time.perf_counter()]
    state, metrics = built.epoch_fn(state, epoch,
                                    on_step=lambda _: marks.append(time.perf_counter()))
    state, loss = jax.block_until_ready((state, metrics["loss"][-1]))
    return state, float(loss), list(np.diff(marks[1:]))

  return run, built.state


def torch_step(args: argparse.Namespace):
  """The reference step on a fixed normalised batch, and torch's thread count."""
  torch = torch_reference.require_torch()
  torch.manual_seed(args.seed)
  model = torch_reference.build_resnet32(torch, 10)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
  criterion = torch.nn.CrossEntropyLoss()
  x = torch.randn(args.batch_size, 3, 32, 32)
  y = torch.randint(0, 10, (args.batch_size,))

  def step() -> float:
    loss = criterion(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()

  return step, torch.get_num_threads()


def measure(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
  """Compiles ltjax's step, then times ltjax and torch steps in alternating rounds."""
  context = (conv_vjp.use_in_resnet_cifar() if variant.conv == "custom_vjp"
             else contextlib.nullcontext())
  with context:
    run, state = ltjax_epoch(args, variant)
    start = time.perf_counter()
    state, loss, _ = run(state)  # compiles
    first_call_s = time.perf_counter() - start
  reference, torch_threads = torch_step(args)
  reference()
  rounds = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    state, loss, dispatch_s = run(state)
    ltjax_s = (time.perf_counter() - start) / args.steps
    torch_s = []
    for _ in range(args.steps):
      start = time.perf_counter()
      reference()
      torch_s.append(time.perf_counter() - start)
    rounds.append({"ltjax_s": ltjax_s, "dispatch_s": dispatch_s, "torch_s": torch_s,
                   "ratio": float(np.median(torch_s) / ltjax_s)})
  return {"first_call_s": first_call_s, "rounds": rounds, "torch_threads": torch_threads,
          "cpu_count": len(os.sched_getaffinity(0)), "ltjax_loss": loss,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


# --- Orchestration and report ----------------------------------------------------------------

def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
  """The worker of VARIANTS[name] in a subprocess (its XLA_FLAGS, its CPU affinity)."""
  variant = VARIANTS[name]
  argv = [f"--batch_size={args.batch_size}", f"--rounds={args.rounds}",
          f"--steps={args.steps}", f"--seed={args.seed}"]
  env = {**os.environ, "XLA_FLAGS": variant.xla_flags}
  cores = variant.cores

  def pin() -> None:
    if cores:
      os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])

  cmd = [sys.executable, "-m", "benchmarks.cpu_step", f"--worker={name}", *argv]
  try:
    return summarize(worker.run(cmd, env, preexec_fn=pin), args.batch_size)
  except worker.WorkerFailed as err:
    return {"error": str(err)}


def summarize(res: dict[str, Any], batch: int) -> dict[str, Any]:
  """Adds medians over all timed steps and the ratio's median / spread over the rounds."""
  ratios = [r["ratio"] for r in res["rounds"]]
  ltjax_ms = 1e3 * float(np.median([r["ltjax_s"] for r in res["rounds"]]))
  torch_ms = 1e3 * float(np.median([t for r in res["rounds"] for t in r["torch_s"]]))
  dispatch = [t for r in res["rounds"] for t in r["dispatch_s"]]
  dispatch_ms = 1e3 * float(np.median(dispatch)) if dispatch else float("nan")
  return {**res, "ltjax_ms": ltjax_ms, "torch_ms": torch_ms, "dispatch_ms": dispatch_ms,
          "ltjax_images_per_s": 1e3 * batch / ltjax_ms,
          "torch_images_per_s": 1e3 * batch / torch_ms,
          "ratio_median": float(np.median(ratios)), "ratio_min": min(ratios),
          "ratio_max": max(ratios)}


def markdown(result: dict[str, Any]) -> str:
  args = result["args"]
  lines = epoch_speed.header_lines("cpu_step", result["environment"], result["command"])
  lines += [f"- step: ResNet-32 ERM, batch {args['batch_size']}; ltjax: an epoch of "
            f"{args['steps']} steps with loop=\"steps\" (gather + crop/flip + normalise on "
            "device, SGD), per step; torch: benchmarks/torch_reference.py's model and SGD on "
            f"a fixed normalised batch, `loss.item()`, median of {args['steps']} steps; "
            f"{args['rounds']} alternating rounds; ratio = torch ms / ltjax ms per round "
            "(> 1: ltjax faster)", "",
            "| variant | setting | ltjax ms | torch ms | ratio median [min, max] "
            "| ltjax img/s | torch img/s | dispatch ms | torch threads |",
            "|---|---|---|---|---|---|---|---|---|"]
  for name, res in result["variants"].items():
    variant = VARIANTS[name]
    setting = f"`{variant.xla_flags}`" if variant.xla_flags else variant.description
    if "error" in res:
      lines.append(f"| {name} | {setting} | failed: {res['error'][-200:]!r} "
                   "| | | | | | |")
      continue
    lines.append(f"| {name} | {setting} | {res['ltjax_ms']:.0f} | {res['torch_ms']:.0f} "
                 f"| {res['ratio_median']:.2f} [{res['ratio_min']:.2f}, "
                 f"{res['ratio_max']:.2f}] | {res['ltjax_images_per_s']:.0f} "
                 f"| {res['torch_images_per_s']:.0f} | {res['dispatch_ms']:.1f} "
                 f"| {res['torch_threads']} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated names of {list(VARIANTS)}")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (ratio spread)")
  p.add_argument("--steps", type=int, default=3, help="steps per framework per round")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  names = [n for n in args.variants.split(",") if n]
  unknown = set(names) - set(VARIANTS)
  if unknown:
    p.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
  args.variant_list = names
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.worker:
    result = measure(args, VARIANTS[args.worker])
    worker.report(result)
    return result
  variants = {}
  for name in args.variant_list:
    variants[name] = run_variant(name, args)
    res = variants[name]
    print(f"{name:>20}: " + (f"ltjax {res['ltjax_ms']:.0f} ms, torch {res['torch_ms']:.0f} "
                             f"ms, ratio {res['ratio_median']:.2f} [{res['ratio_min']:.2f}, "
                             f"{res['ratio_max']:.2f}]" if "error" not in res
                             else f"failed: {res['error'][-300:]}"), flush=True)
  result = {"benchmark": "cpu_step", "command": epoch_speed.command_line("benchmarks.cpu_step"),
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "variant_list")},
            "environment": epoch_speed.environment(), "variants": variants}
  epoch_speed.publish("cpu_step", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
