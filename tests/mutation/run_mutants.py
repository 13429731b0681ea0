"""Mutation testing of the suite: does each realistic one-line bug make a test fail?

Run on demand (not in CI; it takes tens of minutes on 2 cores):

    .venv/bin/python tests/mutation/run_mutants.py [--only NAME,...] [--jobs 1]

Each mutant of `mutants.MUTANTS` replaces one exact snippet of one file (the snippet must
occur exactly once) in a scratch copy of the repository, then runs the tests that should
catch it (`python -m pytest -x -q -p no:cacheprovider <tests>`, with the scratch copy first
on the path). A mutant is *killed* when those tests fail, *survived* when they pass, and
*stale* when its snippet is no longer in the file (the code moved on: update the mutant).
Outcomes are kept per mutant in tests/mutation/results.json (a run with `--only` updates
just those mutants), and tests/mutation/RESULTS.md is written from it: score, per-mutant
outcome and time, and the equivalence arguments kept in `mutants.EQUIVALENT`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import mutants as mutant_list  # noqa: E402  pylint: disable=wrong-import-position

COPIED = ("ltjax", "experiments", "tests", "colabs", "pyproject.toml", "README.md")


def scratch_copy(dest: pathlib.Path) -> None:
  """Copies the parts of the repository the tests need (no .venv, no caches)."""
  ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info")
  for name in COPIED:
    src = ROOT / name
    if src.is_dir():
      shutil.copytree(src, dest / name, ignore=ignore)
    else:
      shutil.copy2(src, dest / name)


def apply(dest: pathlib.Path, mutant: mutant_list.Mutant) -> bool:
  """Applies `mutant` in `dest`; False when its snippet is not found exactly once."""
  path = dest / mutant.file
  text = path.read_text()
  if text.count(mutant.old) != 1:
    return False
  path.write_text(text.replace(mutant.old, mutant.new))
  return True


def run_tests(dest: pathlib.Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, str]:
  """(tests failed, last lines of the output)."""
  env = dict(os.environ, PYTHONPATH=str(dest), JAX_PLATFORMS="cpu")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".pytest_cache" / "jax-compilation"))
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
  try:
    proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return True, "timeout (counted as killed: the mutant hangs the suite)"
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  return proc.returncode != 0, lines[-1] if lines else ""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated mutant names")
  parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
  parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
  parser.add_argument("--record", default=str(HERE / "results.json"))
  args = parser.parse_args()
  chosen = [m for m in mutant_list.MUTANTS
            if not args.only or m.name in args.only.split(",")]
  record_path = pathlib.Path(args.record)
  record = json.loads(record_path.read_text()) if record_path.exists() else {}
  with tempfile.TemporaryDirectory(prefix="ltjax-mutants-") as tmp:
    pristine = pathlib.Path(tmp) / "pristine"
    scratch_copy(pristine)
    for i, mutant in enumerate(chosen):
      dest = pathlib.Path(tmp) / f"m{i}"
      shutil.copytree(pristine, dest)
      start = time.perf_counter()
      if not apply(dest, mutant):
        outcome, detail = "stale", "snippet not found exactly once"
      else:
        failed, detail = run_tests(dest, mutant.tests, args.timeout)
        outcome = "killed" if failed else "survived"
      seconds = time.perf_counter() - start
      shutil.rmtree(dest)
      record[mutant.name] = {"outcome": outcome, "seconds": round(seconds, 1),
                             "detail": detail,
                             "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"}
      record_path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
      print(f"[{i + 1}/{len(chosen)}] {outcome:8s} {seconds:6.1f}s {mutant.name}", flush=True)
  rows = [(m, record[m.name]["outcome"], record[m.name]["seconds"], record[m.name]["detail"])
          if m.name in record else (m, "not run", 0.0, "")
          for m in mutant_list.MUTANTS]
  write_results(pathlib.Path(args.out), rows, " ".join(sys.argv))


def write_results(path: pathlib.Path, rows, command: str) -> None:
  live = [r for r in rows if r[1] in ("killed", "survived")]
  killed = sum(r[1] == "killed" for r in live)
  equivalent = [r for r in live if r[1] == "survived" and r[0].name in mutant_list.EQUIVALENT]
  score = (killed + len(equivalent)) / max(len(live), 1)
  lines = [
      "# Mutation testing results",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
      f"- last command: `{command}`",
      f"- mutants: {len(rows)} ({len(live)} run, "
      f"{sum(r[1] == 'stale' for r in rows)} stale, {sum(r[1] == 'not run' for r in rows)} not run)",
      f"- killed: {killed}; survived but argued equivalent: {len(equivalent)}; "
      f"score (killed + equivalent) / run: {100 * score:.1f} %",
      "",
      "| mutant | file | outcome | s | what it breaks | last line |",
      "|---|---|---|---|---|---|",
  ]
  for mutant, outcome, seconds, detail in rows:
    note = mutant_list.EQUIVALENT.get(mutant.name)
    shown = f"{outcome} (equivalent: {note})" if outcome == "survived" and note else outcome
    lines.append(f"| {mutant.name} | {mutant.file} | {shown} | {seconds:.0f} | "
                 f"{mutant.why} | {detail.replace('|', '/')[:80]} |")
  path.write_text("\n".join(lines) + "\n")
  print(f"score {100 * score:.1f} % -> {path}")


if __name__ == "__main__":
  main()
