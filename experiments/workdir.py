"""A run's workdir: its config fingerprint, its lock, and what a rerun may do with it.

Rules (`experiments.train` and `experiments.compare` follow them for every run folder):

- Fingerprint. `run.json` records the run's config fingerprint: the resolved config
  flattened to `section.field` paths, minus EXCLUDED, and its SHA-256. A workdir *holds a
  run* once it has a checkpoint or a results.json. A rerun whose fields differ from the
  held run's is refused, naming each differing field (`optim.lr: 0.05 -> 0.07`), unless
  `--on_mismatch` says otherwise (ON_MISMATCH):
    refuse  (default) stop before anything in the workdir is touched;
    fresh   move the held run's files to the sibling `<workdir>-old<N>` (nothing is
            deleted) and start afresh in `<workdir>`;
    fork    train in the sibling `<workdir>-fork<N>`: the first that holds no run or a run
            of this very config, so rerunning the same command resumes the same fork.
  A workdir that holds no run yet (no checkpoint written) is reused without a check.
- Excluded fields (EXCLUDED) do not change what is trained, only how the process reports,
  saves or runs it, so a rerun may change them: `eval_every`, `eval_batch_size` (when and
  in which chunks the test set is evaluated; training never reads it), `checkpoint_every`,
  `checkpoint_every_steps`, `keep_checkpoints` (when the state is saved; keys derive from seed, epoch and step, so a
  resumed run continues exactly), `progress`, `plots`, `analysis_draws` (presentation),
  `loop` (how an epoch is compiled: one `lax.scan` or one call per step of the same step
  function), `num_devices`, `jax_distributed` (where the same step runs), `methods`,
  `seeds` (experiments.compare's lists), `arg` (the config argument string; its effect is
  in the resolved fields, so `quick,method=erm` and `method=erm,quick` are one run),
  `reproduces`, `source` (descriptions) and `dataset.data_dir`, `dataset.tfds_data_dir`
  (where the files are read from, not which data: dataset.json records the class
  counts). The run length (`num_epochs`) is fingerprinted: it sets the schedule;
  `--stop_after` is a flag, not a field.
- Lock. A process works in a workdir only while it holds `<workdir>/.lock`, created
  exclusively (write, then `os.link`) with its PID and host. A second process fails with
  "workdir <path> is in use by process N (host H)". The lock is removed on exit, exceptions
  included; a lock left by a dead process on this host (a kill -9) is taken over.
- Jobs of several processes (`claim_job`). Process 0 claims the workdir (the lock, the
  mismatch rule) for the whole job and tells the other processes where it went (the fork,
  if any) or why it was refused; they neither take the lock nor touch the workdir's
  files, so the lock stops other jobs, never a process of the same job. The workdir must
  be on a filesystem every process sees (orbax writes the checkpoints from all of them).
- `run.json` also keeps one timing segment per process that trained epochs
  (experiments/timing.py), so a resumed or rerun run reports the time of all its epochs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from experiments.cli import UserError, flatten
from ltjax import reporting

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
ON_MISMATCH = ("refuse", "fresh", "fork")
EXCLUDED = ("eval_every", "eval_batch_size", "checkpoint_every", "checkpoint_every_steps",
            "keep_checkpoints", "progress", "plots", "analysis_draws", "loop", "num_devices",
            "jax_distributed", "methods", "seeds", "arg", "reproduces", "source",
            "dataset.data_dir", "dataset.tfds_data_dir")
_ABSENT = "(absent)"


# --------------------------------------------------------------------------- fingerprint

def _canonical(value: Any) -> Any:
  """JSON-stable form: tuples become lists, non-finite floats their names ("inf")."""
  if isinstance(value, (list, tuple)):
    return [_canonical(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return str(value)
  return value


def fingerprint_fields(config: Mapping[str, Any]) -> dict[str, Any]:
  """The fingerprinted fields of a resolved config (a dict or ConfigDict): path -> value."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return {path: _canonical(value) for path, value in sorted(flatten(tree).items())
          if path not in EXCLUDED}


def fingerprint(fields: Mapping[str, Any]) -> str:
  """SHA-256 (hex, 16 digits) of the fingerprinted fields."""
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """`path: old -> new` for every field whose value differs (or exists on one side only)."""
  return [f"{path}: {old.get(path, _ABSENT)} -> {new.get(path, _ABSENT)}"
          for path in sorted(set(old) | set(new))
          if old.get(path, _ABSENT) != new.get(path, _ABSENT)]


def holds_run(path: str) -> bool:
  """Whether the workdir holds a run: a complete checkpoint or a results.json."""
  checkpoints = os.path.join(path, "checkpoints")
  has_checkpoint = os.path.isdir(checkpoints) and any(
      name.isdigit() for name in os.listdir(checkpoints))
  return has_checkpoint or os.path.exists(os.path.join(path, "results.json"))


def stored_fields(path: str) -> dict[str, Any] | None:
  """The held run's fingerprinted fields: run.json, else (older runs) config.json."""
  record = os.path.join(path, RUN_FILE)
  if os.path.exists(record):
    return reporting.read_json(record)["fields"]
  config = os.path.join(path, "config.json")
  if os.path.exists(config):
    return fingerprint_fields(reporting.read_json(config))
  return None


def mismatch(path: str, fields: Mapping[str, Any]) -> list[str]:
  """The differing fields between the run held in `path` and `fields` ([]: none, or no run)."""
  if not holds_run(path):
    return []
  stored = stored_fields(path)
  if stored is None:
    return ["config: (not recorded) -> this config"]
  return differences(stored, fields)


def mismatch_message(path: str, fields: Mapping[str, Any], diffs: list[str]) -> str:
  """The refusal: the differing fields and the ways out."""
  return (f"workdir {path} holds a run of another config ({'; '.join(diffs)}). Rerun with "
          f"--on_mismatch=fresh (moves that run to {_sibling(path, 'old')}), "
          f"--on_mismatch=fork (trains in {fork_target(path, fields)}) or another --workdir.")


def _new_record(fields: Mapping[str, Any]) -> dict[str, Any]:
  return {"fingerprint": fingerprint(fields), "fields": dict(fields), "segments": []}


def start_record(path: str, fields: Mapping[str, Any]) -> None:
  """Writes run.json of a run that starts afresh: its fingerprint and no timing segment."""
  reporting.write_json(os.path.join(path, RUN_FILE), _new_record(fields))


def add_segment(path: str, fields: Mapping[str, Any], segment: Mapping[str, Any]
                ) -> list[dict[str, Any]]:
  """Appends one process's timing segment to run.json; returns all segments.

  A run from before run.json existed gets its record here (its fields matched `fields`).
  """
  file = os.path.join(path, RUN_FILE)
  record = reporting.read_json(file) if os.path.exists(file) else _new_record(fields)
  record["segments"].append(dict(segment))
  reporting.write_json(file, record)
  return record["segments"]


def segments(path: str) -> list[dict[str, Any]]:
  """The timing segments recorded in run.json ([] without one)."""
  record = os.path.join(path, RUN_FILE)
  return reporting.read_json(record).get("segments", []) if os.path.exists(record) else []


# ------------------------------------------------------------------------ fresh and fork

def _sibling(path: str, kind: str, taken: Callable[[str], bool] = os.path.exists) -> str:
  """`<path>-<kind><N>` for the smallest N >= 1 that is not `taken`."""
  n = 1
  while taken(f"{path}-{kind}{n}"):
    n += 1
  return f"{path}-{kind}{n}"


def move_aside(path: str) -> str:
  """Moves every file of `path` but its lock to a new `<path>-old<N>`; returns that folder."""
  aside = _sibling(path, "old")
  os.makedirs(aside)
  for name in os.listdir(path):
    if not name.startswith(LOCK_FILE):  # the lock, and a lock being created
      os.rename(os.path.join(path, name), os.path.join(aside, name))
  return aside


def fork_target(path: str, fields: Mapping[str, Any]) -> str:
  """The first `<path>-fork<N>` that holds no run, or a run of exactly `fields`."""
  return _sibling(path, "fork", taken=lambda p: bool(mismatch(p, fields)))


@contextlib.contextmanager
def claim(path: str, fields: Mapping[str, Any], on_mismatch: str = "refuse",
          log: Callable[[str], None] = print) -> Iterator[str]:
  """Locks the workdir a run goes to, settling a config mismatch by `on_mismatch`.

  Args:
    path: the requested workdir.
    fields: the run's fingerprinted fields (`fingerprint_fields`).
    on_mismatch: "refuse", "fresh" or "fork" (module docstring).
    log: where the note about a fresh start or a fork goes.

  Yields:
    The workdir to use, locked: `path`, or the fork.

  Raises:
    UserError: a mismatch under "refuse", an unknown `on_mismatch`, a workdir in use.
  """
  if on_mismatch not in ON_MISMATCH:
    raise UserError(f"on_mismatch must be one of {', '.join(ON_MISMATCH)}, got "
                    f"{on_mismatch!r}.")
  path = os.path.normpath(path)
  with lock(path):
    diffs = mismatch(path, fields)
    if diffs and on_mismatch == "refuse":
      raise UserError(mismatch_message(path, fields, diffs))
    if diffs and on_mismatch == "fresh":
      log(f"{path} held a run of another config ({'; '.join(diffs)}): moved to "
          f"{move_aside(path)}; starting afresh.")
    if not diffs or on_mismatch == "fresh":
      yield path
      return
    target = fork_target(path, fields)
  log(f"{path} holds a run of another config ({'; '.join(diffs)}): forking to {target}.")
  with claim(target, fields, "refuse", log) as forked:
    yield forked


OK, REFUSED, FAILED = "ok", "refused", "failed"  # the outcomes `claim_job` shares


@contextlib.contextmanager
def claim_job(path: str, fields: Mapping[str, Any], on_mismatch: str = "refuse",
              log: Callable[[str], None] = print, *, main: bool = True,
              share: Callable[[str], str] = lambda text: text) -> Iterator[str]:
  """`claim` for each process of a job: process 0 claims, the others follow it.

  Every process of the job calls it at the same point with the same arguments.

  Args:
    path, fields, on_mismatch, log: as `claim` (only process 0 logs).
    main: whether this process is process 0 (`ltjax.training.sharding.is_main_process`).
    share: a collective that returns process 0's text in every process
      (`ltjax.training.sharding.broadcast_text`); the identity in a one-process run.

  Yields:
    The workdir to use (locked by process 0 for the job): `path`, or the fork.

  Raises:
    UserError: as `claim`, in every process (the others get process 0's message).
    RuntimeError: in the other processes, when process 0 failed otherwise before claiming.
  """
  if not main:
    status, _, text = share("").partition(":")
    if status == REFUSED:
      raise UserError(text)
    if status == FAILED:
      raise RuntimeError(f"process 0 could not claim workdir {path}: {text}")
    yield text
    return
  shared = False
  try:
    with claim(path, fields, on_mismatch, log) as target:
      share(f"{OK}:{target}")
      shared = True
      yield target
  except BaseException as e:
    if not shared:
      share(f"{REFUSED if isinstance(e, UserError) else FAILED}:{e}")
    raise


# ---------------------------------------------------------------------------------- lock

def _owner() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname()}


def _read_owner(lock_file: str) -> dict[str, Any] | None:
  try:
    return reporting.read_json(lock_file)
  except (OSError, ValueError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _stale(holder: Mapping[str, Any]) -> bool:
  """A lock of a process of this host that no longer exists."""
  return holder.get("host") == socket.gethostname() and not _alive(int(holder["pid"]))


def _try_create(lock_file: str, owner: Mapping[str, Any]) -> bool:
  """Creates the lock file with `owner` in one step (False when it exists)."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(lock_file), prefix=".lock.")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(dict(owner), f)
    os.link(tmp, lock_file)
    return True
  except FileExistsError:
    return False
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


@contextlib.contextmanager
def lock(path: str) -> Iterator[None]:
  """Holds `<path>/.lock` (PID and host) for the duration; removed on exit and on errors.

  Raises:
    UserError: another live process holds it ("workdir <path> is in use by process N
      (host H)").
  """
  os.makedirs(path, exist_ok=True)
  lock_file = os.path.join(path, LOCK_FILE)
  owner = _owner()
  while not _try_create(lock_file, owner):
    holder = _read_owner(lock_file)
    if holder is None or not _stale(holder):
      pid, host = (holder or {}).get("pid", "?"), (holder or {}).get("host", "?")
      raise UserError(f"workdir {path} is in use by process {pid} (host {host}); wait for "
                      f"it to finish, or delete {lock_file} if that process is gone.")
    with contextlib.suppress(FileNotFoundError):
      os.remove(lock_file)
  try:
    yield
  finally:
    if _read_owner(lock_file) == owner:
      os.remove(lock_file)
