"""Workdir rules (experiments/workdir.py, experiments/timing.py): fingerprint, lock, timing.

The unit tests build fake run folders; the end-to-end tests run `python -m
experiments.train / evaluate / compare` on Digits-LT's `quick` variant (2 epochs, no plots)
once per test session (`chain`, shared by the xdist workers): two processes started on one
fresh workdir, a resume over a stale lock with an excluded field changed, a rerun of the
complete run, reruns with a changed config, an evaluation after them; the compare tests
work on copies of that run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import timing
from experiments import workdir as wd
from experiments.cli import UserError
from ltjax import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "experiments/configs/digits_lt.py"
CONFIG = [f"--config={DIGITS}:method=erm,quick,epochs=2", "--config.plots=False"]
FIELDS = {"method": "erm", "optim.lr": 0.05, "schedule.milestones": [1]}


def _fake_run(path, fields, epochs=(1,)):
  """A folder that holds a run: checkpoint folders and run.json of `fields`."""
  for epoch in epochs:
    os.makedirs(os.path.join(path, "checkpoints", str(epoch)))
  wd.start_record(str(path), fields)
  return str(path)


def _dead_pid():
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(proc.stdout)


def _write_lock(path, pid, host):
  with open(os.path.join(path, wd.LOCK_FILE), "w") as f:
    json.dump({"pid": pid, "host": host}, f)


# ------------------------------------------------------------------------- fingerprint

def test_fingerprint_fields_drop_exactly_the_excluded_fields():
  config = {"method": "erm", "optim": {"lr": 0.05, "momentum": 0.9},
            "schedule": {"milestones": (80, 90)}, "recipe": {"gamma": float("inf")},
            "dataset": {"name": "digits_lt", "data_dir": "/data"}, "eval_every": 5,
            "plots": True, "arg": "quick", "loop": "auto", "source": "a paper"}
  assert wd.fingerprint_fields(config) == {
      "method": "erm", "optim.lr": 0.05, "optim.momentum": 0.9,
      "schedule.milestones": [80, 90], "recipe.gamma": "inf", "dataset.name": "digits_lt"}
  moved = dict(config, eval_every=1, plots=False, arg="method=erm,quick",
               dataset={"name": "digits_lt", "data_dir": "/elsewhere"})
  assert wd.fingerprint(wd.fingerprint_fields(moved)) == wd.fingerprint(
      wd.fingerprint_fields(config))
  other = dict(config, optim={"lr": 0.07, "momentum": 0.9})
  assert wd.fingerprint(wd.fingerprint_fields(other)) != wd.fingerprint(
      wd.fingerprint_fields(config))


def test_differences_name_each_field_old_to_new():
  old = {"method": "mixup", "optim.lr": 0.05, "recipe.alpha": 1.0}
  new = {"method": "erm", "optim.lr": 0.05, "recipe.beta": 0.9}
  assert wd.differences(old, new) == ["method: mixup -> erm", "recipe.alpha: 1.0 -> (absent)",
                                      "recipe.beta: (absent) -> 0.9"]


def test_a_workdir_holds_a_run_once_it_has_a_complete_checkpoint(tmp_path):
  assert not wd.holds_run(str(tmp_path))
  os.makedirs(tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-17")
  assert not wd.holds_run(str(tmp_path))  # a write that died half way
  os.makedirs(tmp_path / "checkpoints" / "3")
  assert wd.holds_run(str(tmp_path))


def test_a_run_from_before_run_json_is_compared_through_config_json(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "2")
  reporting.write_json(str(tmp_path / "config.json"),
                       {"method": "erm", "optim": {"lr": 0.05}, "eval_every": 5})
  assert wd.mismatch(str(tmp_path), {"method": "erm", "optim.lr": 0.05}) == []
  assert wd.mismatch(str(tmp_path), {"method": "erm", "optim.lr": 0.1}) == [
      "optim.lr: 0.05 -> 0.1"]


# ------------------------------------------------------------------------------- claim

def test_claim_refuses_another_config_and_touches_nothing(tmp_path):
  run = _fake_run(tmp_path / "run", FIELDS)
  before = sorted(os.listdir(run))
  with pytest.raises(UserError, match=r"optim\.lr: 0\.05 -> 0\.07.*--on_mismatch=fresh"):
    with wd.claim(run, dict(FIELDS, **{"optim.lr": 0.07})):
      pass
  assert sorted(os.listdir(run)) == before
  with wd.claim(run, dict(FIELDS)) as path:  # the same config resumes in place
    assert path == run and os.path.exists(os.path.join(run, wd.LOCK_FILE))
  assert not os.path.exists(os.path.join(run, wd.LOCK_FILE))


def test_claim_fresh_moves_the_old_run_aside(tmp_path):
  run = _fake_run(tmp_path / "run", FIELDS)
  new = dict(FIELDS, method="mixup")
  notes = []
  with wd.claim(run, new, "fresh", notes.append) as path:
    assert path == run and os.listdir(run) == [wd.LOCK_FILE]
  aside = str(tmp_path / "run-old1")
  assert sorted(os.listdir(aside)) == ["checkpoints", "run.json"]
  assert reporting.read_json(os.path.join(aside, "run.json"))["fields"] == FIELDS
  assert "method: erm -> mixup" in notes[0] and aside in notes[0]


def test_claim_fork_reuses_the_fork_of_the_same_config(tmp_path):
  run = _fake_run(tmp_path / "run", FIELDS)
  changed = dict(FIELDS, **{"optim.lr": 0.07})
  with wd.claim(run, changed, "fork", print) as path:
    assert path == str(tmp_path / "run-fork1")
    _fake_run(path, changed)
  with wd.claim(run, changed, "fork", print) as path:  # the same command: the same fork
    assert path == str(tmp_path / "run-fork1")
  with wd.claim(run, dict(FIELDS, method="remix"), "fork", print) as path:
    assert path == str(tmp_path / "run-fork2")
  assert reporting.read_json(os.path.join(run, "run.json"))["fields"] == FIELDS


def test_claim_rejects_an_unknown_option(tmp_path):
  with pytest.raises(UserError, match="refuse, fresh, fork"):
    with wd.claim(str(tmp_path), FIELDS, "overwrite"):
      pass


# -------------------------------------------------------------------------------- lock

def test_lock_is_exclusive_and_released_on_errors(tmp_path):
  path = str(tmp_path)
  with pytest.raises(RuntimeError, match="boom"):
    with wd.lock(path):
      with pytest.raises(UserError, match=f"workdir {path} is in use by process "
                                          f"{os.getpid()} \\(host {socket.gethostname()}\\)"):
        with wd.lock(path):
          pass
      raise RuntimeError("boom")
  assert os.listdir(path) == []
  with wd.lock(path):
    pass


def test_lock_of_a_dead_process_is_taken_over_only_on_its_host(tmp_path):
  path = str(tmp_path)
  dead = _dead_pid()
  _write_lock(path, dead, socket.gethostname())
  with wd.lock(path):
    assert reporting.read_json(os.path.join(path, wd.LOCK_FILE))["pid"] == os.getpid()
  _write_lock(path, dead, "another-host")
  with pytest.raises(UserError, match=f"in use by process {dead} \\(host another-host\\)"):
    with wd.lock(path):
      pass


# ------------------------------------------------------------------------------ timing

def test_timing_summary_sums_the_segments():
  segments = [
      {"wall_s": 10.0, "import_s": 2.0, "data_s": 1.0, "compile_s": 4.0, "train_s": 2.0,
       "epochs": 3, "epoch_times_s": [5.0, 1.0, 3.0]},
      {"wall_s": 6.0, "import_s": 2.5, "data_s": 0.5, "compile_s": 1.5, "train_s": 1.0,
       "epochs": 2, "epoch_times_s": [4.0, 2.0]}]
  out = timing.summary(segments, epochs_done=5)
  assert (out["wall_time_s"], out["import_s"], out["data_s"], out["compile_s"],
          out["train_s"]) == (16.0, 4.5, 1.5, 5.5, 3.0)
  assert out["epoch_time_s"] == 2.0  # median of 1, 3, 2: first epochs excluded
  assert (out["first_epoch_time_s"], out["epochs_trained"], out["launches"]) == (5.0, 5, 2)
  assert out["epochs_done"] == 5 and out["segments"] == segments


def test_a_one_process_launch_lists_itself_as_its_only_process():
  own = timing.segment(from_epoch=0, epoch_times=[2.0, 1.0], import_s=1.5, data_s=0.5,
                       compile_s=0.75, fit_s=3.0, fit_compile_s=0.5, run_s=4.0)
  launch = timing.across_processes(own)
  assert launch["processes"] == [{
      "process_index": 0, "pid": os.getpid(), "host": socket.gethostname(), "wall_s": 5.5,
      "import_s": 1.5, "data_s": 0.5, "compile_s": 0.75, "train_s": 2.5}]
  assert {k: v for k, v in launch.items() if k != "processes"} == own


def test_compile_clock_counts_compilation_not_cached_calls():
  f = jax.jit(lambda x: jnp.tanh(x) @ x.T + x.sum())
  x = jnp.ones((7, 5))
  with timing.compile_clock() as compiled:
    f(x).block_until_ready()
    first = compiled()
    f(x).block_until_ready()
  assert first > 0 and compiled() == first


# ------------------------------------------------------------------- end to end: train

def _start(module, *args):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc):
  stdout, stderr = proc.communicate(timeout=600)
  return {"pid": proc.pid, "returncode": proc.returncode, "stdout": stdout,
          "stderr": stderr}


def _train(run, *args):
  return _finish(_start("experiments.train", *CONFIG, f"--workdir={run}", *args))


def _build_chain(folder):
  """The train / evaluate processes of the end-to-end tests; their outputs in procs.json."""
  run = os.path.join(folder, "run")
  procs = {}
  # Two processes on one fresh workdir; the run stops before its first evaluation.
  twins = [_start("experiments.train", *CONFIG, f"--workdir={run}", "--stop_after=1",
                  "--config.eval_every=2") for _ in range(2)]
  procs["twins"] = [_finish(p) for p in twins]
  procs["epochs_after_stop"] = [r["epoch"] for r in reporting.read_metrics(run)]
  procs["results_after_stop"] = os.path.exists(os.path.join(run, "results.json"))
  # A lock left by a killed process; the resume changes an excluded field only.
  _write_lock(run, _dead_pid(), socket.gethostname())
  procs["resume"] = _train(run, "--config.eval_every=1")
  shutil.copy(os.path.join(run, "results.json"), os.path.join(folder, "resumed.json"))
  procs["rerun"] = _train(run)
  with open(os.path.join(run, "config.json")) as f:
    procs["config_before"] = f.read()
  procs["lr"] = _train(run, "--config.optim.lr=0.07")
  procs["model"] = _train(run, "--config.model.name=mlp")
  with open(os.path.join(run, "config.json")) as f:
    procs["config_after"] = f.read()
  procs["evaluate"] = _finish(_start("experiments.evaluate", f"--workdir={run}"))
  reporting.write_json(os.path.join(folder, "procs.json"), procs)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """(run folder, process records) of `_build_chain`, built once per test session."""
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  root = tmp_path_factory.getbasetemp()
  root = root.parent / f"chain-{run_id}" if run_id else root / "chain"
  os.makedirs(root, exist_ok=True)
  with open(root / "build.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # other xdist workers wait, then reuse it
    if not (root / "procs.json").exists():
      _build_chain(str(root))
  return str(root / "run"), reporting.read_json(str(root / "procs.json"))


def _ok(record):
  assert record["returncode"] == 0, record["stdout"][-2000:] + record["stderr"][-2000:]


def _user_error(record):
  """The one stderr line of a user error (exit status 2, no traceback)."""
  assert record["returncode"] == 2, record["stderr"][-2000:]
  assert "Traceback" not in record["stderr"]
  errors = [line for line in record["stderr"].splitlines() if ": error: " in line]
  assert len(errors) == 1, record["stderr"]
  return errors[0]


@pytest.mark.slow
def test_two_processes_on_one_workdir_one_trains_the_other_stops(chain):
  run, procs = chain
  winner, loser = sorted(procs["twins"], key=lambda r: r["returncode"])
  _ok(winner)
  message = _user_error(loser)
  assert (f"workdir {run} is in use by process {winner['pid']} (host "
          f"{socket.gethostname()})") in message
  assert procs["epochs_after_stop"] == [0]  # one row per epoch, none lost or doubled


@pytest.mark.slow
def test_a_stop_before_any_evaluation_exits_cleanly(chain):
  run, procs = chain
  winner = min(procs["twins"], key=lambda r: r["returncode"])
  assert ("erm: stopped after epoch 1 (checkpoint saved); no evaluation yet, rerun to "
          "continue") in winner["stdout"]
  assert not procs["results_after_stop"]


@pytest.mark.slow
def test_resume_over_a_stale_lock_adds_up_the_timing(chain):
  run, procs = chain
  _ok(procs["resume"])
  assert "Resuming" in procs["resume"]["stdout"]
  assert not os.path.exists(os.path.join(run, wd.LOCK_FILE))
  timing_ = reporting.read_json(os.path.join(os.path.dirname(run), "resumed.json"))["timing"]
  segments = timing_["segments"]
  winner = min(procs["twins"], key=lambda r: r["returncode"])
  assert [(s["pid"], s["from_epoch"], s["epochs"]) for s in segments] == [
      (winner["pid"], 0, 1), (procs["resume"]["pid"], 1, 1)]
  for name, total in (("wall_s", "wall_time_s"), ("import_s", "import_s"),
                      ("data_s", "data_s"), ("compile_s", "compile_s"),
                      ("train_s", "train_s")):
    assert timing_[total] == pytest.approx(sum(s[name] for s in segments)), name
    assert all(s[name] > 0 for s in segments), name
  for s in segments:  # the parts fit in the process's wall time
    assert s["import_s"] + s["data_s"] + s["compile_s"] + s["train_s"] < s["wall_s"]
  assert [r["epoch"] for r in reporting.read_metrics(run)] == [0, 1]


@pytest.mark.slow
def test_a_rerun_of_a_complete_run_keeps_its_timing(chain):
  run, procs = chain
  _ok(procs["rerun"])
  before = reporting.read_json(os.path.join(os.path.dirname(run), "resumed.json"))["timing"]
  after = reporting.read_json(os.path.join(run, "results.json"))["timing"]
  assert after["segments"] == before["segments"] and after["epochs_this_process"] == 0
  assert after["wall_time_s"] == before["wall_time_s"]
  assert after["compile_s"] == before["compile_s"]


@pytest.mark.slow
def test_a_changed_config_is_refused_before_anything_is_written(chain):
  run, procs = chain
  lr = _user_error(procs["lr"])
  assert "optim.lr: 0.05 -> 0.07" in lr and "--on_mismatch=fork" in lr
  assert "model.name: small_cnn -> mlp" in _user_error(procs["model"])
  assert procs["config_after"] == procs["config_before"]
  assert json.loads(procs["config_before"])["optim"]["lr"] == 0.05


@pytest.mark.slow
def test_evaluate_still_works_after_the_refused_reruns(chain):
  run, procs = chain
  _ok(procs["evaluate"])
  report = reporting.read_json(os.path.join(run, "eval.json"))
  results = reporting.read_json(os.path.join(run, "results.json"))
  assert report["epoch"] == 2
  assert report["top1"] == pytest.approx(results["final"]["top1"])


# ----------------------------------------------------------------- end to end: compare

def _compare(workdir, *args):
  return _finish(_start("experiments.compare", f"--config={DIGITS}:quick,epochs=2",
                        "--config.plots=False", f"--workdir={workdir}", *args))


def _copy_run(chain, workdir, method):
  shutil.copytree(chain[0], os.path.join(workdir, method, "seed0"))


@pytest.mark.slow
def test_compare_refuses_a_complete_run_of_another_config(chain, tmp_path):
  _copy_run(chain, str(tmp_path), "erm")
  proc = _compare(str(tmp_path), "--methods=erm", "--seeds=0", "--config.optim.lr=0.07")
  message = _user_error(proc)
  assert os.path.join(str(tmp_path), "erm", "seed0") in message
  assert "optim.lr: 0.05 -> 0.07" in message and "--on_mismatch=fresh" in message


@pytest.mark.slow
@pytest.mark.parametrize("parallel, log", [(1, "error.log"), (2, "stdout.log")])
def test_compare_finishes_the_other_runs_and_reports_the_failures(chain, tmp_path, parallel,
                                                                  log):
  _copy_run(chain, str(tmp_path), "erm")  # erm seed 0: complete, skipped
  busy = [os.path.join(str(tmp_path), m, f"seed{s}")
          for m, s in (("mixup", 0), ("mixup", 1), ("erm", 1))]
  with contextlib.ExitStack() as stack:  # these runs fail: their workdirs are in use
    for path in busy:
      stack.enter_context(wd.lock(path))
    proc = _compare(str(tmp_path), "--methods=mixup,erm", "--seeds=0,1",
                    f"--parallel={parallel}")
  assert proc["returncode"] == 1, proc["stderr"][-2000:]
  report = proc["stderr"].split("3 of 4 runs failed:\n")[1].splitlines()
  assert len(report) == 3, report  # the runs after the first failure were tried too
  for path, (method, seed) in zip(busy, (("mixup", 0), ("mixup", 1), ("erm", 1))):
    (line,) = [r for r in report if r.startswith(f"  {method} seed {seed}: ")]
    assert f"workdir {path} is in use by process {os.getpid()} (host " in line
    assert line.endswith(f"(log: {os.path.join(path, log)})")
    assert os.path.exists(os.path.join(path, log))
  table = open(os.path.join(str(tmp_path), "comparison.md")).read()
  header, _, mixup, erm = [line for line in table.splitlines() if line.startswith("|")]
  assert "compile (s)" in header and mixup.endswith("| 0 |")  # mixup: no result
  compile_s = reporting.read_json(os.path.join(chain[0], "results.json"))["timing"][
      "compile_s"]
  assert erm.split("|")[7].strip() == f"{compile_s:.1f}"
