"""Runs a command with the words of an environment variable appended: how `make` passes ARGS.

  python3 scripts/with_args.py [--echo] VAR COMMAND [ARG ...]

The value of VAR is split into words the way a shell splits them (quotes and
backslashes are honoured), but it is never evaluated: a ';', '$(...)', a
backtick or a glob in it is an ordinary character. A value can add arguments;
it can never run a command. Standard library only: it runs before (and
without) the virtualenv. ``--echo`` prints the command, shell-quoted, first.
"""

from __future__ import annotations

import os
import shlex
import sys

_PREFIX = "W2SG_MAKE_"  # The Makefile exports its variable X as W2SG_MAKE_X.


def main(argv: list[str]) -> None:
  echo = len(argv) > 1 and argv[1] == "--echo"
  argv = [argv[0], *argv[1 + echo:]]
  if len(argv) < 3:
    print(f"usage: {argv[0]} [--echo] VAR COMMAND [ARG ...]", file=sys.stderr)
    sys.exit(2)
  var, command = argv[1], argv[2:]
  value = os.environ.get(var, "")
  try:
    words = shlex.split(value)
  except ValueError as exc:
    name = var[len(_PREFIX):] if var.startswith(_PREFIX) else var
    print(f"error: {name}={value!r} cannot be split into arguments ({exc}). Close the quote, or escape the "
          "character with a backslash.", file=sys.stderr)
    sys.exit(2)
  if echo:
    print(shlex.join(command + words), flush=True)
  os.execvp(command[0], command + words)


if __name__ == "__main__":
  main(sys.argv)
