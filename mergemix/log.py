"""The package's console messages: one logger, `mergemix`, whose records are emitted on the global rank 0 only
(every rank of a distributed run executes the same stages) as plain lines, progress and results on stdout,
warnings on stderr after `warning: `, the passwords of URLs masked. Installed on import, idempotent; configure it
with the `logging` module like any other (e.g. `logging.getLogger("mergemix").setLevel(logging.WARNING)` for
warnings only)."""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time

from mergemix.errors import mask_secrets

log = logging.getLogger("mergemix")


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from lightning_fabric.utilities.rank_zero import rank_zero_only  # the rank Lightning's launchers set

        return getattr(rank_zero_only, "rank", 0) == 0


class _Console(logging.Handler):
    """A record's message alone on the current stdout (stderr, after `warning: `, from WARNING up), as print
    writes it, also when a test or Hydra swaps the streams."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            warn = record.levelno >= logging.WARNING
            stream = sys.stderr if warn else sys.stdout
            stream.write(("warning: " if warn else "") + mask_secrets(self.format(record)) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


def console() -> None:
    """Install the console handler and the rank-zero filter on the `mergemix` logger (once)."""
    if not any(isinstance(h, _Console) for h in log.handlers):
        log.addHandler(_Console())
    if not any(isinstance(f, _RankZero) for f in log.filters):
        log.addFilter(_RankZero())
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    log.propagate = False  # not also through the handlers Hydra gives the root logger


console()


def mirror_job_log() -> None:
    """Write the `mergemix` logger's records to the job's log file too: the FileHandlers Hydra's job logging gives
    the root logger (`<run dir>/<command>.log`); those of an earlier job of a multirun are dropped."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for h in [h for h in log.handlers if isinstance(h, logging.FileHandler) and h not in files]:
        log.removeHandler(h)
    for h in files:
        if h not in log.handlers:
            h.addFilter(_Masked())
            log.addHandler(h)


class _Masked(logging.Filter):
    """The passwords of URLs masked in a record's message, for handlers that format it themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_secrets(record.getMessage()), ()
        return True


def interactive() -> bool:
    """Whether the console is a terminal (progress bars) rather than a log file (progress lines)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """Progress as log lines where no bar can draw (a log file): `[desc] 40/200 steps (20%), 3.1 steps/s, ETA
    0:00:52`, one every `every_s` seconds (default: MERGEMIX_PROGRESS_S, else 30) and the last one at the end
    when any was written; nothing on a terminal. The rate counts from `start` (a resumed run's first step)."""

    def __init__(self, desc: str, total: float, unit: str, every_s: float | None = None, start: float = 0):
        self.desc, self.total, self.unit, self.done, self.start = desc, total, unit, start, start
        self.every = float(os.environ.get("MERGEMIX_PROGRESS_S", "30")) if every_s is None else every_s
        self.on, self.lines = not interactive(), 0
        self.t0 = self.last = time.monotonic()

    def advance(self, n: float = 1, note: str = "") -> None:
        self.update(self.done + n, note)

    def update(self, done: float, note: str = "") -> None:
        self.done, now = done, time.monotonic()
        if self.on and (now - self.last >= self.every or (done >= self.total and self.lines)):
            self.last, self.lines = now, self.lines + 1
            log.info(self.line(now) + (f", {note}" if note else ""))

    def line(self, now: float) -> str:
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)
        eta = str(datetime.timedelta(seconds=round((self.total - self.done) / rate))) if rate > 0 else "?"
        return (
            f"[{self.desc}] {self.done:.0f}/{self.total:.0f} {self.unit} "
            f"({100 * self.done / max(self.total, 1e-9):.0f}%), {rate:.3g} {self.unit}/s, ETA {eta}"
        )
