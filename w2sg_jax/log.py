"""The one logger of w2sg-jax: ``[w2sg] message`` lines on stderr.

Every module logs through ``from w2sg_jax.log import log``; the level is INFO
by default and ``W2SG_LOG_LEVEL`` (e.g. ``WARNING``) changes it.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["log"]

log = logging.getLogger("w2sg")
if not log.handlers:
  _handler = logging.StreamHandler(sys.stderr)
  _handler.setFormatter(logging.Formatter("[w2sg] %(message)s"))
  log.addHandler(_handler)
  log.setLevel(os.environ.get("W2SG_LOG_LEVEL", "INFO").upper())
  log.propagate = False  # absl's root handler would print every line twice.
