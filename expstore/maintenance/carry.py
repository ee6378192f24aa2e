"""What convert and merge carry from source pools into the copy besides the rows.

The copy's rows are written through ``Store.extend``, which tags them as if recorded anew: one
env, episodes split only at terminated/truncated rows, every priority the max. That would lose
what the source knows: its step ids and episode ids, each vector-env sub-env's interleaved
episodes (the rows' forward links and the env id of each episode), episodes cut off by a crash,
the evicted part of the oldest episodes, and the priorities. So after each slice the copy's
per-row bookkeeping (backends/internal.py) is overwritten with the source's, and before the final commit
the episode table, the open episodes and the max priority are copied too.

convert keeps step ids and episode ids as they are: the copy is created at the first step id
it keeps. merge renumbers: the sources follow each other, step ids counting on from the first
source's first step id, episode ids likewise. An episode still open at the end of a source
other than the last is closed there as cut off, and the first episodes of a later source that
began before its oldest copied row start at that row (their earlier rows never were in the
merged pool, so they are not reported as evicted).

Sources without bookkeeping (archives, pools created before it existed) carry only their step
ids; their rows are tagged by ``extend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backends.internal import EPISODE_TABLE, FINAL_PREFIX, FINAL_STORED, EpisodeStatus, info_env
from ..core.episodes import write_run
from ..core.snapshot import SourceBook
from ..errors import WriterOutranError


@dataclass
class _Segment:
    """The copy's rows [dst_row, dst_row + count) are the source's steps from ``src_step`` on."""

    book: SourceBook | None
    src_step: int
    count: int
    dst_row: int
    step_shift: int = 0  # dst step id = source step id + step_shift
    id_shift: int = 0  # dst episode id = source episode id + id_shift
    last: bool = False
    restart: dict = field(default_factory=dict)  # episodes rebased to their oldest copied row


def _source_book(segment: _Segment) -> SourceBook:
    """The source snapshot of a segment of a copy that carries bookkeeping (every one has it)."""
    if segment.book is None:
        raise ValueError("a copy that carries bookkeeping has a source snapshot for every segment")
    return segment.book


class Carry:
    """The plan of a copy: its first step id, and each source's rows and bookkeeping in it.

    A source's part is fixed by ``begin`` once its first rows were read: a writer appending to a
    source meanwhile may have evicted its oldest rows, so the copy of that source starts later.

    Args:
        sources: the row sources, in order (``book`` attribute: a SourceBook, or None).
        first_step_id: the copy's first step id as planned (the first source's first kept row).
        renumber: merge (True) or convert (False; one source).
    """

    def __init__(self, sources, first_step_id: int, renumber: bool):
        self.segments: list[_Segment] = []
        self.sources, self.renumber = sources, renumber
        self.books = [getattr(source, "book", None) for source in sources]
        self.carries_bookkeeping = all(book is not None for book in self.books)
        self.first_step_id = first_step_id
        self._dst_row = self._dst_step = self._next_id = 0

    def begin(self, position: int, first_step: int, count: int) -> None:
        """Source ``position`` gives the copy its steps [first_step, first_step + count); call it
        for every source, in order, before its rows are copied.

        Raises:
            WriterOutranError: the source's writer evicted ``first_step`` while its episodes were read.
        """
        book = self.sources[position].book if self.carries_bookkeeping else None  # of its latest snapshot
        segment = _Segment(book, first_step, count, self._dst_row, last=position == len(self.sources) - 1)
        if position == 0:
            self.first_step_id = first_step
        if position and self.renumber:
            segment.step_shift = self._dst_step - first_step
        if position and self.renumber and book is not None:
            segment.id_shift = self._next_id - book.min_episode_id(first_step)
            ids, entries, _ = book.entries(first_step)
            segment.restart = book.starts_at(first_step, ids, entries[:, 1])
            if not book.still_holds(first_step):  # the scans above may have read rows overwritten meanwhile
                raise WriterOutranError(f"{book.store.path}: its writer evicted step {first_step} while the copy "
                                        "read the episodes it starts with")
        self.segments.append(segment)
        self._dst_row += segment.count
        self._dst_step = first_step + segment.step_shift + segment.count
        if book is not None:
            self._next_id = book.next_id + segment.id_shift

    def create_options(self) -> dict:
        """Options of ``expstore.open`` for the copy: step ids, and the source's table layout."""
        options = {"first_step_id": self.first_step_id}
        book = self.books[0] if self.books and self.carries_bookkeeping else None
        if book is not None:
            views = book.store.mapped.views
            options["derive_next_obs"] = any(name.startswith(FINAL_PREFIX) for name in views)
            if len(views[EPISODE_TABLE]) < book.slots:
                options["max_episodes"] = len(views[EPISODE_TABLE])
            if options["derive_next_obs"]:
                options["max_final_obs"] = book.book.final_table.rows
        return options

    # ------------------------------------------------------------------ while copying
    def after_rows(self, store, first_row: int, book_rows: dict[str, np.ndarray] | None) -> None:
        """Overwrite the tags ``extend`` gave the copy's rows from ``first_row`` on with the
        source's bookkeeping ``book_rows`` of them (read with the rows, see read_kept). The rows
        come from the newest segment ``begin`` started."""
        if not self.carries_bookkeeping or store.bookkeeping is None or book_rows is None:
            return
        segment = self.segments[-1]
        src_start = segment.src_step + first_row - segment.dst_row
        for name, column in self._transformed(segment, book_rows).items():
            write_run(store.mapped.views[name], src_start + segment.step_shift, column, store.ring.slots)

    @staticmethod
    def _transformed(segment: _Segment, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        episode_ids = values["_episode_id"]
        for episode_id, (_step, rows_before, return_before) in segment.restart.items():
            rows = episode_ids == episode_id
            values["_episode_step"][rows] -= rows_before
            values["_episode_return"][rows] -= return_before
        values["_episode_id"] = episode_ids + segment.id_shift
        return values

    # ------------------------------------------------------------------ at the end
    def finish(self, store) -> None:
        """Write the episode table, the open episodes and the max priority into the copy."""
        if not self.carries_bookkeeping or store.bookkeeping is None:
            return
        book = store.bookkeeping.book
        book.clear_entries()  # drop the entries extend made: only the sources' episodes remain
        book.open, book.committed_open = {}, {}
        parts = [self._write_entries(store, segment) for segment in self.segments]
        written = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        ends = [_source_book(s).next_id + s.id_shift for s in self.segments if s.count]
        book.next_id = max(ends, default=book.next_id)
        book.low_id = int(written.min()) if written.size else book.next_id
        store.bookkeeping.max_priority = float(max(_source_book(s).max_priority for s in self.segments))

    def _write_entries(self, store, segment: _Segment) -> np.ndarray:
        if not segment.count:
            return np.zeros(0, np.int64)
        book, source = store.bookkeeping.book, _source_book(segment)
        ids, entries, is_open = source.entries(segment.src_step)
        source_ids = ids.copy()
        entries[:, 0] += segment.id_shift
        entries[:, 1:3] += segment.step_shift
        for position, episode_id in enumerate(ids):
            if int(episode_id) in segment.restart:
                entries[position, 1] = segment.restart[int(episode_id)][0] + segment.step_shift
        closed_now = is_open & (not segment.last)
        entries[closed_now, 3] += EpisodeStatus.CUT_OFF  # open entries hold episode_info(env_id), status OPEN (0)
        still_open = is_open & segment.last
        for entry in entries[still_open]:
            book.open[int(info_env(entry[3]))] = book.open_at(int(entry[0]), int(entry[1]), int(entry[2]))
        entries[still_open, 2] = -1
        finals, held, _ = source.book.finals_of(source_ids, source.kept)
        entries[:, 3] = np.where(held, entries[:, 3] | FINAL_STORED, entries[:, 3] & ~FINAL_STORED)
        book.restore_entries(entries, finals if book.final_table else None, store.window[0])
        return entries[:, 0]
