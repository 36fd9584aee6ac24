"""The Colab notebooks: their structure, and a headless run of each with smoke parameters (nbclient, CPU).

The kernel is this interpreter (a kernelspec written to a temp dir), so the
tests run the notebooks against the code under test in any venv.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
COLAB = REPO / "experiments" / "colab"
NOTEBOOKS = ("paper_reproduction.ipynb", "quickstart.ipynb")
PARAMETERS = {"CONFIG", "WORKDIR", "OVERRIDES", "RUN", "REPO_URL"}


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
  setup = "\n".join(c.source for c in nb.cells)
  # The install is guarded by an import, so it is skipped where the package is present.
  assert "except ImportError" in setup and "pip" in setup and "git+{REPO_URL}" in setup
  assert "jax.devices()" in setup and "from w2sg_jax.main import run" in setup


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
