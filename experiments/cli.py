"""What the three scripts share on the command line: user errors, flag parsing, config printing.

A mistake of the user (an unknown method or config field, a batch larger than the training
set, a workdir in use, a full disk, missing data files, ...) is a `UserError`: `run(main)`
prints it as one line on stderr, `<script>: error: <message>`, and exits with status 2. Any
other exception is a bug and keeps its traceback (exit status 1).

Flag errors are user errors too: `parse_flags` turns absl's and the config file's errors
(`--config=...:method=bogus`, `--config.recipe.alpha` for a method without alpha, a
misspelled `--config.optim.lrr`) into one line that names the field, its close matches and
the fields that exist.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import importlib.util
import os
import sys
import time
from typing import Any, Callable, Iterator, NoReturn

from absl import app
from absl import flags
import ml_collections

# When this module was imported: the scripts import it first, so `seconds_since_start()` is
# the time the process spent importing jax, flax, ltjax and resolving its config.
_PROCESS_START = time.perf_counter()
EXIT_USER_ERROR = 2
CONFIG_FLAG = "config"
CACHE_FLAG = "compilation_cache"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ltjax", "jax-compilation")


class UserError(ValueError):
  """A mistake in the command line, config or workdir: shown as one line, exit status 2."""


def seconds_since_start() -> float:
  """Seconds since the script started (imports and flag parsing), from this module's import."""
  return time.perf_counter() - _PROCESS_START


def fail(message: str) -> NoReturn:
  """Prints `<script>: error: <message>` as one line on stderr and exits with status 2."""
  script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "experiments"
  print(f"{script}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` with user errors (flags included) as one line and exit status 2,
  and JAX's persistent compilation cache on (`--compilation_cache`)."""
  flags.DEFINE_string(
      CACHE_FLAG, os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_CACHE),
      "Folder of JAX's persistent compilation cache, shared by every run ('none': off).")

  def guarded(argv: list[str]) -> Any:
    enable_compilation_cache(flags.FLAGS[CACHE_FLAG].value)
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded, flags_parser=parse_flags)


def define_distributed_flags() -> None:
  """--jax_distributed and the multi-process coordinates of `jax.distributed.initialize`."""
  flags.DEFINE_bool("jax_distributed", False,
                    "Call jax.distributed.initialize() before anything else (implied by the "
                    "three flags below; without them JAX detects SLURM / TPU pods).")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 in a multi-process run.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of the run.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def distributed_coordinates() -> dict[str, Any] | None:
  """The `initialize_distributed` arguments the flags ask for; None for a one-process run."""
  coords = {name: flags.FLAGS[name].value
            for name in ("coordinator_address", "num_processes", "process_id")}
  if flags.FLAGS.jax_distributed or any(v is not None for v in coords.values()):
    return coords
  return None


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in `directory` ("none" or "": off).

  Every executable is cached, however short its compilation: the engine passes a run's
  seed, learning-rate schedule and recipe hyperparameters as inputs of its compiled
  functions (`ltjax.training.loop.StepInputs`), so another run of the same method, model
  and batch size compiles nothing, in this process or a later one.
  """
  if directory.strip().lower() in ("", "none"):
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with flag and config-file errors reported by `fail`.

  Errors that are not the user's (anything but a flag error, a ValueError of the config
  file or an unknown config field) propagate with their traceback.
  """
  config_arg = _config_arg(argv)
  if config_arg is not None and not os.path.isfile(config_arg.partition(":")[0]):
    fail(f"config file {config_arg.partition(':')[0]!r} not found.")
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):
    message = _unknown_override(config_arg, argv)
    if message is None:
      raise
  except flags.Error as e:
    cause = _one_line_cause(e)
    if cause is not e and not isinstance(cause, ValueError):
      raise
    message = str(cause)
  fail(message)


def _config_arg(argv: list[str]) -> str | None:
  """The value of `--config=...` in argv, None when absent."""
  for arg in argv[1:]:
    for prefix in (f"--{CONFIG_FLAG}=", f"-{CONFIG_FLAG}="):
      if arg.startswith(prefix):
        return arg[len(prefix):]
  return None


def _override_paths(argv: list[str]) -> list[str]:
  """The field paths of the `--config.PATH=VALUE` arguments."""
  paths = []
  for arg in argv[1:]:
    name = arg.lstrip("-").split("=", 1)[0]
    if name.startswith(CONFIG_FLAG + "."):
      paths.append(name[len(CONFIG_FLAG) + 1:])
  return paths


def _one_line_cause(error: BaseException) -> BaseException:
  """The outermost exception of the cause chain with a one-line message.

  A config file's ValueError reaches absl wrapped twice, with the traceback in the wrappers'
  messages; the original exception is the one to show.
  """
  while "\n" in str(error) and (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  return error


def _unknown_override(config_arg: str | None, argv: list[str]) -> str | None:
  """The message for the first `--config.PATH` that names no field (None: every path exists)."""
  if config_arg is None:
    return None
  path, _, arg = config_arg.partition(":")
  config = load_config_module(path).get_config(arg or None)
  for field in _override_paths(argv):
    message = unknown_field_message(config, field)
    if message is not None:
      return message
  return None


def load_config_module(path: str):
  """Imports an experiment config file by path."""
  name = "experiment_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None:
    raise UserError(f"cannot load config file {path!r}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def unknown_field_message(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why `config.<path>` does not exist (None when it does).

  Names the first missing key, the section it is missing from (with the method for
  config.recipe, whose fields depend on it), close matches and the section's fields, e.g.
  "config.recipe has no field 'alpha' for method erm; its fields: beta, drw_epoch, ...".
  """
  node, parents = config, []
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"config.{'.'.join(parents)} is a value, not a section: it has no field {key!r}."
    if key not in node:
      section = ".".join(["config", *parents])
      owner = f" for method {config.get('method')}" if parents == ["recipe"] else ""
      close = difflib.get_close_matches(key, list(node.keys()), n=3)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      return (f"{section} has no field {key!r}{owner}{hint}; its fields: "
              f"{', '.join(sorted(node.keys()))}.")
    node = node[key]
    parents.append(key)
  return None


def format_config(config: ml_collections.ConfigDict) -> str:
  """The config as `key.path = value` lines (tuples and strings as Python literals)."""
  return "\n".join(f"  {key} = {value!r}" for key, value in flatten(config.to_dict()).items())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; an empty section stays as its empty dict."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def _disk_full(error: BaseException) -> OSError | None:
  """The `No space left on device` OSError in the exception chain, None when there is none."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return error
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def disk_full_errors(path: str) -> Iterator[None]:
  """Turns an exception caused by a full disk into a one-line UserError naming the path."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    full = _disk_full(e)
    if full is None:
      raise
    where = full.filename or path
    raise UserError(f"no space left on device while writing {where}: free space on that "
                    f"disk (or pick another --workdir) and rerun; the run resumes from its "
                    f"last complete checkpoint.") from e
