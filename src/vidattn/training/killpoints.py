"""Test-only crash injection: ``VIDATTN_TEST_KILL_AT=point@n`` SIGKILLs the process the n-th time it reaches ``point``.

The crash tests use it to land a kill -9 deterministically inside a checkpoint save or a data-preparation write;
unset (always, outside tests) :meth:`KillPoints.reach` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "VIDATTN_TEST_KILL_AT"


class KillPoints:
    """Counts named points; kills this process with SIGKILL at the configured point's n-th visit."""

    def __init__(self, spec: str | None = None) -> None:
        self.point, self.at, self.seen = None, 0, 0
        if spec:
            point, _, count = spec.partition("@")
            if not point or not count.isdigit() or int(count) < 1:
                raise ValueError(f"{ENV} must look like point@n (n >= 1), got {spec!r}")
            self.point, self.at = point, int(count)

    @classmethod
    def from_env(cls) -> "KillPoints":
        return cls(os.environ.get(ENV))

    def reach(self, point: str) -> None:
        """Mark ``point`` as reached; dies here (no cleanup, like a power cut) when it is the configured visit."""
        if point != self.point:
            return
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
