"""Running a rebuild in a thread so a test can look at the KB at its most dangerous moment."""

from __future__ import annotations

import threading
from typing import Any

from kb.service import KnowledgeBase, Progress
from kb.types import FileResult


def pause_before_last_file(resume: threading.Event, paused: threading.Event) -> Progress:
    """A rebuild progress callback that holds the rebuild just before it re-reads its last file, until
    ``resume`` is set: every other file has been re-read by then, into the shadow index only."""

    def progress(_fraction: float, message: str) -> None:
        done, _, total = message.partition(" ")[0].partition("/")  # messages read "3/24 name.md"
        if total and done == total:
            paused.set()
            if not resume.wait(timeout=600):
                raise TimeoutError("the test never resumed the rebuild")

    return progress


class RebuildThread(threading.Thread):
    """kb.rebuild in a thread; an exception raised there is re-raised by ``join`` instead of being lost."""

    def __init__(self, kb: KnowledgeBase, progress: Progress, **options: Any):
        super().__init__(name=f"rebuild-{kb.name}")
        self.kb, self.progress, self.options = kb, progress, options
        self.results: list[FileResult] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.results = self.kb.rebuild(progress=self.progress, **self.options)
        except BaseException as e:  # re-raised in join()
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        assert not self.is_alive(), "the rebuild did not finish in time"
        if self.error is not None:
            raise self.error
