"""Progress: bars that papermill runs can silence, and the lines that replace them there.

In a notebook opened by hand a `tqdm` bar shows progress. Under `saelab.runs` the kernel's bars
are off (a bar saved frozen at 0% in an executed notebook helps nobody) and the kernel's stdout
reaches the terminal line by line instead, so the runner sets `SAELAB_HEARTBEAT` to a number of
seconds and every long loop (training, evaluation, cache writing) prints a `Heartbeat` line at
least that often: done / total, tokens/s, ETA. `make run` is then never silent for a minute.
"""

import math
import os
import time

from tqdm.auto import tqdm

HEARTBEAT_ENV = "SAELAB_HEARTBEAT"  # seconds between progress lines; unset: no lines


def progress_bar(enabled: bool = True, **kwargs) -> tqdm:
    """A `tqdm.auto` bar (`kwargs` as tqdm's: total, initial, desc, unit...), hidden when not
    `enabled` or when `TQDM_DISABLE` is set. `saelab.runs` sets it for the kernels it starts, so
    no widget bar is saved frozen at 0% in an executed notebook; the check is ours because
    `tqdm.notebook` replaces a missing `disable` with False before tqdm reads the environment."""
    hidden = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(disable=hidden, **kwargs)


def say(text: str) -> None:
    """A time-stamped progress line on stdout, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def duration(seconds: float) -> str:
    """`seconds` as "4m05s" (or "12s"; "?" when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def _seconds(text: str) -> float | None:
    """`$SAELAB_HEARTBEAT` as seconds; None (no lines) when unset or not a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


class Heartbeat:
    """Progress lines of one loop over `total` units (steps, rows), at most one every
    `$SAELAB_HEARTBEAT` seconds, and none when it is unset (a notebook run by hand has its bar).

        beat = Heartbeat("evaluate", total=n_rows, unit="rows", tokens_per_unit=n_ctx)
        for i in ...: ...; beat.tick(i + 1)
    """

    def __init__(self, desc: str, total: int, unit: str = "steps", tokens_per_unit: int = 0,
                 start: int = 0, enabled: bool = True):  # fmt: skip
        self.every = _seconds(os.environ.get(HEARTBEAT_ENV, "")) if enabled else None
        self.desc, self.total, self.unit = desc, total, unit
        self.tokens, self.start = tokens_per_unit, start
        self.t0 = self.last = time.time()

    def tick(self, done: int) -> None:
        """`done` units of `total` are finished; say so if the last line is old enough."""
        now = time.time()
        if self.every is None or not self.start < done < self.total:
            return
        if now - self.last < self.every:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        speed = f", {rate * self.tokens:,.0f} tokens/s" if self.tokens else ""
        eta = (self.total - done) / rate if rate > 0 else math.inf
        say(f"{self.desc}: {done:,}/{self.total:,} {self.unit}{speed}, ETA {duration(eta)}")
