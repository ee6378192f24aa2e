"""Ctrl-C as a request to stop at the next step, so that a run ends with its pool committed.

A ``KeyboardInterrupt`` raised wherever the main thread happens to be (inside an append, a
commit or ``torch.save``) would unwind through code that is not written to stop half-way;
the trainers instead check :attr:`StopRequest.requested` between steps, then commit the pool,
write a checkpoint and return :class:`Interrupted`. A second Ctrl-C ends the process at once,
as ``kill`` does: by the commit protocol that loses nothing the pool had committed.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any, Self

logger = logging.getLogger("expstore.train")


@dataclass(frozen=True)
class Interrupted:
    """What a run returns when a stop was requested before it reached its total."""

    position: int  # env steps online, gradient updates offline
    unit: str  # "step" or "update"


class StopRequest:
    """Within ``with``: the first SIGINT sets :attr:`requested`; the second ends the process.

    Outside the main thread no handler can be installed (Python's rule), and ``requested``
    simply stays False.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the handler to put back

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_interrupt)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_interrupt(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C: the OS ends the process at once
        logger.warning("stopping after this step: committing the pool and writing a checkpoint "
                       "(Ctrl-C again stops at once; nothing committed is lost)")


def ignore_interrupts(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of DataLoader workers: Ctrl-C in a terminal reaches the whole process
    group, and a worker that died of it would fail the main process's next batch instead of
    letting it stop cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
