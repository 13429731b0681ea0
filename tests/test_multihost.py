"""Multi-process runs: two CPU processes of two devices each (JAX distributed, gloo
collectives, coordinator on 127.0.0.1) against one process of four devices.

Each run is a subprocess, since the device count and the distributed runtime are set before
JAX starts.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import workdir as workdir_lib
from experiments.cli import UserError
from ltjax import reporting

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 300

# Trains a SmallCNN 8 steps with `fit` over a mesh of all the job's devices, on a replicated
# DeviceDataset (ERM) or, with "stream", on a StreamedDataset read by each process for its
# rows (LOBM, two class-balanced law slots, host flips; checkpointed in WORKDIR, mid-epoch
# every 2 steps as well), then evaluates it with a mesh-sharded EvalFn; writes the final
# params and the test counts to OUT.
FIT_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    num_processes, process_id, port, out, source, workdir = (
        int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5],
        sys.argv[6])
    if num_processes > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                 num_processes=num_processes, process_id=process_id)
    import numpy as np
    from ltjax import methods, models
    from ltjax import recipe as recipe_lib
    from ltjax.training import evaluation, optim, sharding, trainer

    assert jax.process_count() == num_processes and jax.device_count() == 4
    K = 4
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    labels = (np.arange(64) % K).astype(np.int32)
    test_images = rng.integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
    test_labels = rng.integers(0, K, 21).astype(np.int32)
    normalize = lambda x: x.astype(np.float32) / 255.0 - 0.5
    model = models.get_model("small_cnn", K)
    rcp = methods.get_recipe("lobm" if source == "stream" else "erm", num_epochs=2)
    phase = trainer.Phase(rcp, 2, optim.sgd(0.1, momentum=0.9, weight_decay=5e-4))
    mesh = sharding.make_mesh()
    read = []  # the test rows this process decoded
    stream_kw = {}
    if source == "stream":
      from ltjax.data import pipeline, stream

      class RecordingSource(pipeline.ArraySource):
        def __getitem__(self, index):
          read.append(int(index))
          return super().__getitem__(index)

      data = stream.StreamedDataset(pipeline.ArraySource(images, labels), labels, K,
                                    transforms=(pipeline.RandomHorizontalFlip(),))
      stream_kw = {"test_data": stream.StreamedDataset(
          RecordingSource(test_images, test_labels), test_labels, K), "eval_batch_size": 8,
          "workdir": workdir, "checkpoint_every_steps": 2}
    else:
      data = recipe_lib.DeviceDataset.from_arrays(images, labels, K)
    result = trainer.fit(model, [phase], data, batch_size=16, seed=3, normalize_fn=normalize,
                         mesh=mesh, progress=False, loop="steps", eval_every=2, **stream_kw)
    state = result.state
    fit_top1 = (result.final_metrics or {}).get("top1", -1.0)
    eval_fn = evaluation.make_eval_fn(model.apply, rcp, 8, normalize, mesh=mesh)
    counts = eval_fn.counts(state.params, state.batch_stats, test_images, test_labels)
    leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    np.savez(out, *leaves, total=np.asarray(counts.total), correct=np.asarray(counts.correct),
             confusion=np.asarray(counts.confusion), loss=np.asarray(counts.loss),
             num_leaves=len(leaves), read=np.asarray(sorted(read), np.int64),
             fit_top1=np.float64(fit_top1))
    print("FIT-OK")
""")

TRAIN = ["-m", "experiments.train",
         "--config=experiments/configs/digits_lt.py:method=erm,quick,epochs=2",
         "--config.progress=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _run_job(commands: list[list[str]], devices: int) -> list[str]:
  """Runs the commands (one per process) together; returns their stdouts."""
  procs = [subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for cmd in commands]
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:  # a process left waiting for a peer that failed
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} of {len(procs)} failed:\n{err[-4000:]}"
  return [out for out, _ in outputs]


def _load(path: pathlib.Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
  with np.load(path) as f:
    leaves = [f[f"arr_{i}"] for i in range(int(f["num_leaves"]))]
    return leaves, {k: f[k] for k in ("total", "correct", "confusion", "loss", "read",
                                      "fit_top1")}


@pytest.mark.parametrize("source", ["device", "stream"])
def test_two_processes_train_and_evaluate_as_one_process_of_four_devices(tmp_path, source):
  port = _free_port()
  two = [tmp_path / f"two_{i}.npz" for i in range(2)]
  _run_job([["-c", FIT_SCRIPT, "2", str(i), str(port), str(two[i]), source,
             str(tmp_path / "two")] for i in range(2)], devices=2)
  one = tmp_path / "one.npz"
  _run_job([["-c", FIT_SCRIPT, "1", "0", "0", str(one), source, str(tmp_path / "one")]],
           devices=4)
  ref_leaves, ref_counts = _load(one)
  for path in two:
    leaves, counts = _load(path)
    assert len(leaves) == len(ref_leaves)
    for a, b in zip(leaves, ref_leaves):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for name in ("total", "correct", "confusion"):
      np.testing.assert_array_equal(counts[name], ref_counts[name])
    np.testing.assert_allclose(counts["loss"], ref_counts["loss"], rtol=1e-5)
    # fit's streamed evaluation: the same top-1 as one process.
    np.testing.assert_allclose(counts["fit_top1"], ref_counts["fit_top1"], rtol=1e-6)
  assert ref_counts["total"].sum() == 21  # the padded rows of the last batch count nowhere
  if source == "stream":
    # Each process decoded only its half of every test batch (rows 0-3 / 4-7 of each 8;
    # the last batch, rows 16-20, is padded with row 20): together each row once.
    first, second = (set(_load(p)[1]["read"].tolist()) for p in two)
    assert first == {r for r in range(21) if r % 8 < 4}
    assert second == {r for r in range(21) if r % 8 >= 4}
    assert set(ref_counts["read"].tolist()) == set(range(21))
    # Both epochs saved mid-epoch (step 2 of 4); each epoch checkpoint removed them.
    checkpoints = tmp_path / "two" / "checkpoints"
    assert (checkpoints / "partial").is_dir() and not os.listdir(checkpoints / "partial")
    assert sorted(os.listdir(checkpoints)) == ["1", "2", "partial"]


def test_two_process_run_writes_the_workdir_once_and_resumes_in_one_process(tmp_path):
  workdir = tmp_path / "run"
  port = _free_port()
  outputs = _run_job(
      [[*TRAIN, f"--workdir={workdir}", "--stop_after=1", f"--coordinator_address="
        f"127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"] for i in range(2)],
      devices=2)
  assert "erm: top1" in outputs[0] and "erm: top1" not in outputs[1]  # process 0 reports
  assert [r["epoch"] for r in reporting.read_metrics(str(workdir))] == [0]
  assert len(glob.glob(str(workdir / "events.out.tfevents.*"))) == 1
  assert not os.path.exists(workdir / ".lock")
  env = reporting.read_json(str(workdir / "env.json"))
  assert (env["process_count"], env["device_count"]) == (2, 4)
  [launch] = reporting.read_json(str(workdir / "run.json"))["segments"]
  # One segment for the launch: each process's own time, the launch's is the slowest's.
  processes = launch["processes"]
  assert [p["process_index"] for p in processes] == [0, 1]
  assert len({p["pid"] for p in processes}) == 2 and launch["pid"] == processes[0]["pid"]
  assert all(p["host"] == socket.gethostname() for p in processes)
  for name in ("wall_s", "import_s", "data_s", "compile_s", "train_s"):
    assert all(p[name] > 0 for p in processes), name
    assert launch[name] == max(p[name] for p in processes), name
  assert json.loads((workdir / "results.json").read_text())["extra"]["complete"] is False

  # The same run, resumed by one process of one device, trains its second epoch.
  proc = subprocess.run([sys.executable, *TRAIN, f"--workdir={workdir}"], cwd=REPO,
                        env={**_env(1), "XLA_FLAGS": ""}, capture_output=True, text=True,
                        timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"Resuming {workdir} after epoch 1." in proc.stdout
  assert [r["epoch"] for r in reporting.read_metrics(str(workdir))] == [0, 1]
  assert len(reporting.read_json(str(workdir / "run.json"))["segments"]) == 2
  assert json.loads((workdir / "results.json").read_text())["extra"]["complete"] is True


def _held_run(path: pathlib.Path, fields: dict[str, int]) -> str:
  """A workdir holding a finished run of `fields`."""
  path.mkdir()
  workdir_lib.start_record(str(path), fields)
  reporting.write_json(str(path / "results.json"), {})
  return str(path)


def test_claim_job_process_zero_locks_and_the_others_follow_it(tmp_path):
  path = _held_run(tmp_path / "run", {"optim.lr": 1})
  new = {"optim.lr": 2}
  shared = []

  def share(text):  # process 0's broadcast, recorded
    shared.append(text)
    return text

  with pytest.raises(UserError, match="holds a run of another config") as refused:
    with workdir_lib.claim_job(path, new, main=True, share=share):
      pass
  with pytest.raises(UserError) as followed:  # process 1 gets process 0's refusal
    with workdir_lib.claim_job(path, new, main=False, share=lambda _: shared[-1]):
      pass
  assert str(followed.value) == str(refused.value)

  with workdir_lib.claim_job(path, new, "fork", log=lambda _: None, main=True,
                             share=share) as fork:
    assert fork == f"{path}-fork1" and os.path.exists(os.path.join(fork, ".lock"))
    # Process 1 of the same job is not stopped by the lock and goes to the same fork.
    with workdir_lib.claim_job(path, new, "fork", main=False,
                               share=lambda _: shared[-1]) as followed_fork:
      assert followed_fork == fork
  assert not os.path.exists(os.path.join(fork, ".lock"))


def test_metric_writer_without_writes_keeps_the_rows_and_writes_nothing(tmp_path):
  with reporting.MetricWriter(str(tmp_path), steps_per_epoch=5) as writer:
    for epoch in range(3):
      writer.write(epoch, {"train/loss": float(epoch)})
  files = sorted(os.listdir(tmp_path))
  with reporting.MetricWriter(str(tmp_path), steps_per_epoch=5, start_epoch=2,
                              writes=False) as follower:
    assert [r["epoch"] for r in follower.rows] == [0, 1]
    row = follower.write(2, {"train/loss": 7.0})
  assert row == {"epoch": 2, "step": 15, "train/loss": 7.0}
  assert sorted(os.listdir(tmp_path)) == files
  assert [r["train/loss"] for r in reporting.read_metrics(str(tmp_path))] == [0.0, 1.0, 2.0]
