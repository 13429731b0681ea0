"""The built wheel: ltjax, the experiment scripts and configs, entry points, LICENSE, version.

The wheel is built offline (`pip wheel --no-deps --no-build-isolation`) from a copy of the
sources in a temporary folder, so the checkout gets no `build/` folder.
"""

from __future__ import annotations

import email.parser
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import ltjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "ltjax", "experiments")
SCRIPTS = {"ltjax-train": "experiments.train:run",
           "ltjax-compare": "experiments.compare:run",
           "ltjax-evaluate": "experiments.evaluate:run"}


def _python_files(folder: str) -> set[str]:
  """Repository-relative paths of the .py files under `folder` (no caches)."""
  found = set()
  for parent, dirs, files in os.walk(os.path.join(ROOT, folder)):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    found |= {os.path.relpath(os.path.join(parent, f), ROOT) for f in files
              if f.endswith(".py")}
  return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
  """The wheel built from a copy of the sources."""
  try:
    import setuptools  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pytest.skip("setuptools is needed to build the wheel offline")
  src = tmp_path_factory.mktemp("src")
  for name in SOURCES:
    path = os.path.join(ROOT, name)
    if os.path.isdir(path):
      shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(path, src / name)
  out = tmp_path_factory.mktemp("wheel")
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
                         capture_output=True, text=True, timeout=300, check=False)
  assert build.returncode == 0, build.stdout + build.stderr
  (path,) = out.glob("ltjax-*.whl")
  with zipfile.ZipFile(path) as whl:
    yield whl


def _dist_info(whl: zipfile.ZipFile, name: str) -> str:
  (member,) = [n for n in whl.namelist()
               if n.split("/")[0].endswith(".dist-info") and n.endswith("/" + name)]
  return whl.read(member).decode()


def test_wheel_holds_ltjax_experiments_and_every_config(wheel):
  names = set(wheel.namelist())
  expected = _python_files("ltjax") | _python_files("experiments")
  assert "experiments/configs/digits_lt.py" in expected  # the walk found the configs
  assert not expected - names, sorted(expected - names)


def test_license_is_the_apache_text(wheel):
  text = _dist_info(wheel, "licenses/LICENSE")
  with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
    assert text == f.read()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub


def test_metadata_version_license_and_authors(wheel):
  meta = email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))
  assert meta["Name"] == "ltjax"
  assert meta["Version"] == ltjax.__version__
  assert meta["License-Expression"] == "Apache-2.0"
  assert meta["Author"] == "ltjax developers"
  assert meta["Keywords"] and meta.get_all("Classifier")
  required = {r.split(">")[0].split("=")[0] for r in meta.get_all("Requires-Dist")
              if "extra ==" not in r}
  assert {"ott-jax", "scikit-learn", "ml-collections"} <= required
  assert not {"grain", "tensorflow-datasets"} & required  # extras only


def test_console_scripts_point_at_the_experiment_scripts(wheel):
  text = _dist_info(wheel, "entry_points.txt")
  scripts = {line.split("=")[0].strip(): line.split("=")[1].strip()
             for line in text.split("[console_scripts]")[1].strip().splitlines()}
  assert scripts == SCRIPTS


def test_console_script_targets_exist():
  for name, target in SCRIPTS.items():
    entry = importlib.metadata.EntryPoint(name, target, "console_scripts")
    assert callable(entry.load()), f"{name} -> {target} is not a function"


def test_installed_configs_load_by_path(wheel, tmp_path):
  """The configs import from the unpacked wheel and `--config=` takes their file path."""
  site = tmp_path / "site"
  wheel.extractall(site)
  script = (
      "import importlib, os, pkgutil\n"
      "from absl import flags\n"
      "from ml_collections import config_flags\n"
      "import experiments.configs\n"
      "folder = os.path.dirname(experiments.configs.__file__)\n"
      "print(folder)\n"
      "for m in pkgutil.iter_modules([folder]):\n"
      "  importlib.import_module('experiments.configs.' + m.name)\n"
      "config = config_flags.DEFINE_config_file('config')\n"
      "flags.FLAGS(['prog', '--config=' + os.path.join(folder, 'digits_lt.py') + ':quick'])\n"
      "print(config.value.dataset.name)\n")
  env = {**os.environ, "PYTHONPATH": str(site)}
  run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 0, run.stderr
  folder, dataset = run.stdout.split()[-2:]
  assert folder == str(site / "experiments" / "configs")
  assert dataset == "digits_lt"


def test_ott_loads_only_with_ot_pairing():
  """`import ltjax.methods` and `ltjax.training` leave ott-jax (and the extras) unimported."""
  script = (
      "import sys\n"
      "import numpy as np\n"
      "import ltjax, ltjax.data, ltjax.methods, ltjax.training\n"
      "print(sorted(m for m in ('ott', 'grain', 'tensorflow_datasets', 'sklearn')"
      " if m in sys.modules))\n"
      "from ltjax import pairing\n"
      "perm = np.array([2, 0, 3, 1])\n"
      "cost = 1.0 - np.eye(4, dtype=np.float32)[perm]\n"
      "print(np.asarray(pairing.ot_pairs(cost)).tolist(), 'ott' in sys.modules)\n")
  run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
  assert run.returncode == 0, run.stderr
  imported, pairs = run.stdout.strip().splitlines()[-2:]
  assert imported == "[]"
  assert pairs == "[2, 0, 3, 1] True"  # foreground i takes the zero-cost background perm[i]


NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"


def _first_markdown(path: str) -> str:
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  return next(cell.source for cell in nb.cells if cell.cell_type == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_intro_is_not_indented(path):
  source = _first_markdown(path)
  lines = source.splitlines()
  assert lines[0].startswith("# ")
  indented = [line for line in lines if line.startswith("    ")]
  assert not indented, f"indented lines render as a code block: {indented}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_colab_badge_renders_as_a_link(path):
  markdown_it = pytest.importorskip("markdown_it")
  tokens = markdown_it.MarkdownIt("commonmark").parse(_first_markdown(path))
  blocks = [t.content for t in tokens if t.type in ("code_block", "fence")]
  assert not blocks, f"code blocks in the intro: {blocks}"
  inline = [child for t in tokens if t.type == "inline" for child in t.children]
  links = [i for i, t in enumerate(inline) if t.type == "link_open"]
  badge = [i for i in links if inline[i + 1].type == "image"
           and inline[i + 1].attrGet("src") == BADGE_SVG]
  assert len(badge) == 1, "no Colab badge link in the first markdown cell"
  href = inline[badge[0]].attrGet("href")
  assert href.startswith("https://colab.research.google.com/github/")
  assert href.endswith("/colabs/" + os.path.basename(path))


def test_the_pipeline_without_grain_says_how_to_install_it():
  code = ("import sys; sys.modules['grain'] = None\n"
          "try:\n  import ltjax.data.pipeline\nexcept ImportError as e:\n  print(e)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert "pip install 'ltjax[grain]'" in proc.stdout, proc.stdout + proc.stderr[-2000:]
