"""Progress bars that leave one line behind.

`Progress` is a tqdm bar while a stage runs. When it finishes, the bar is
cleared and one log line stays, naming the stage, its count and its time::

  [w2sg] students js (4 runs): 64 steps in 2.3s (loss 0.2192)

When stderr is not a terminal (CI logs, ``2> file``) no bar is drawn, which
would fill the log with carriage returns; a line is logged at most every
``log_every_s`` seconds instead, then the final line. ``W2SG_PROGRESS=0``
turns the bars off everywhere (the final lines stay).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from w2sg_jax.log import log

__all__ = ["Progress"]


def _interactive() -> bool:
  if os.environ.get("W2SG_PROGRESS", "1").lower() in ("0", "false", "no", "off"):
    return False
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


class Progress:
  """A bar over ``total`` units of one stage; use as a context manager, or call `close`.

  Args:
    total: units the stage will do (steps, examples, groups).
    desc: the stage's name, e.g. ``"students js (4 runs)"``.
    unit: what is counted, singular (``"step"``).
    initial: units already done (a resumed run); the final line counts only this session's.
    enabled: False for no bar and no line at all.
    log_every_s: without a terminal, seconds between progress lines.
  """

  def __init__(self, total: int, desc: str, *, unit: str = "step", initial: int = 0, enabled: bool = True,
               log_every_s: float = 30.0):
    from tqdm.auto import tqdm

    self.total, self.desc, self.unit = int(total), desc, unit
    self.enabled = enabled
    self.interactive = enabled and _interactive()
    self.start = self.n = int(initial)
    self.postfix: dict[str, Any] = {}
    self.log_every_s = log_every_s
    self._t0 = self._last_log = time.perf_counter()
    self._closed = False
    self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, leave=False,
                     disable=not self.interactive, dynamic_ncols=True)

  def update(self, n: int = 1) -> None:
    self.n += int(n)
    self._bar.update(int(n))
    if self.enabled and not self.interactive:
      now = time.perf_counter()
      if now - self._last_log >= self.log_every_s and self.n < self.total:
        self._last_log = now
        log.info("%s: %d/%d %ss%s", self.desc, self.n, self.total, self.unit, self._postfix_text())

  def set_postfix(self, **values: Any) -> None:
    self.postfix = values
    self._bar.set_postfix(**values)

  def _postfix_text(self) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in self.postfix.items())})" if self.postfix else ""

  def close(self, *, failed: bool = False) -> None:
    """Clears the bar and logs the stage's one line (``stopped`` when ``failed``)."""
    if self._closed:
      return
    self._closed = True
    self._bar.close()
    if not self.enabled:
      return
    seconds = time.perf_counter() - self._t0
    done = self.n - self.start
    plural = "" if done == 1 else "s"
    if failed:
      log.info("%s: stopped after %d of %d %s%s (%.1fs)", self.desc, self.n, self.total, self.unit,
               "s" if self.total != 1 else "", seconds)
    else:
      resumed = f", resumed at {self.start}" if self.start else ""
      log.info("%s: %d %s%s in %.1fs%s%s", self.desc, done, self.unit, plural, seconds, resumed,
               self._postfix_text())

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(failed=exc_type is not None)
