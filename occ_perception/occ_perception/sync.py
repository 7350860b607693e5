"""A ROS-free approximate-time synchroniser with exact drop accounting.

Behaves as the Python ``message_filters.ApproximateTimeSynchronizer(fs,
queue_size, slop)`` of ROS 2 (the rclpy one, not the C++ ApproximateTime
policy, which is another algorithm). Its rule, restated:

- Each input keeps a queue of messages keyed by stamp. A message whose stamp
  is already in its input's queue replaces the one there (the key keeps its
  place in the queue's order). After each insertion, while the queue holds
  more than ``queue_size`` stamps, the smallest stamp is removed -- possibly
  the message that just arrived.
- Then, for the arriving message (stamp ``t``) only, every *other* input's
  queue is searched for stamps ``s`` with ``|s - t| <= slop``. If some input
  has none, nothing is emitted. Otherwise each input's candidates are sorted
  by ``|s - t|`` (a stable sort, so equal distances keep queue order), and
  the combinations are tried in lexicographic order of those lists (the first
  other input varies slowest), with ``t`` in the arriving input's place. The
  first combination whose spread ``max - min`` is strictly below ``slop`` and
  whose stamps are all still queued (the arriving message may have been
  pushed out by the overflow) is emitted, and its messages leave their queues.
- At most one set is emitted per arrival; nothing else ever leaves a queue.

Optional streams (an extension for a failed camera): the streams in
:attr:`ApproximateTimeSync.optional`, set by the caller before an arrival, are
not searched; the set is emitted without them (``SyncedSet.missing``) and their
queued messages stay where they are.

The search here walks the same lexicographic order depth first and prunes a
branch as soon as its partial spread reaches ``slop`` (adding stamps can only
widen it), so it returns the same first combination without enumerating the
whole product.

Accounting: every message added ends either in exactly one emitted
:class:`SyncedSet` or in exactly one :class:`Drop`, with reason
``'superseded'`` (replaced by a later message of the same input and stamp),
``'queue_overflow'`` (pushed out of a full queue as its oldest stamp),
``'left_at_end'`` (still queued at :meth:`ApproximateTimeSync.flush`) or
``'time_backwards'`` (still queued when the caller reset the synchroniser
because time went backwards, ``flush('time_backwards')``). A
message that finds no partner within slop is not dropped on the spot: as in
message_filters it waits in its queue, where a later arrival may still pick
it, until it is pushed out (``'queue_overflow'``) or flushed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    'DROP_REASONS',
    'ApproximateTimeSync',
    'Drop',
    'SyncError',
    'SyncedSet',
    'synchronise',
]

DROP_REASONS = ('superseded', 'queue_overflow', 'left_at_end', 'time_backwards')


class SyncError(ValueError):
    """Bad synchroniser parameters or an input on a stream that does not exist."""


@dataclass(frozen=True)
class SyncedSet:
    """One synchronised set: a message of every stream.

    Attributes:
        stamps_ns: (num_streams,) stamps [ns] in stream order; -1 for a missing stream.
        payloads: the messages' payloads in stream order; None for a missing stream.
        missing: the optional streams (:attr:`ApproximateTimeSync.optional`) that are not in the set.
    """

    stamps_ns: tuple[int, ...]
    payloads: tuple[Any, ...]
    missing: tuple[int, ...] = ()

    @property
    def spread_ns(self) -> int:
        """Largest minus smallest stamp of the streams present [ns]."""
        present = [s for i, s in enumerate(self.stamps_ns) if i not in self.missing]
        return max(present) - min(present)


@dataclass(frozen=True)
class Drop:
    """A message that left the synchroniser without being part of a set.

    Attributes:
        stream: input index. stamp_ns: its stamp [ns]. payload: what was added.
        reason: one of :data:`DROP_REASONS`.
    """

    stream: int
    stamp_ns: int
    payload: Any
    reason: str


def slop_to_ns(slop: float) -> int:
    """Slop [s] to integer nanoseconds, truncated as rclpy's ``Duration(seconds=slop)`` does."""
    return int(float(slop) * 1e9)


class ApproximateTimeSync:
    """Approximate-time synchroniser of ``num_streams`` inputs (message_filters' Python policy).

    Args:
        num_streams: number of inputs (e.g. 7: six cameras and the pose).
        queue_size: stamps kept per input (message_filters' ``queue_size``), >= 1.
        slop: the largest stamp spread of a set [s] (message_filters' ``slop``;
            candidates within ``slop`` of the arriving stamp, spread strictly below it).
        callback: called with each :class:`SyncedSet` as it is emitted.
        on_drop: called with each :class:`Drop` as it happens.

    Raises:
        SyncError: fewer than 2 streams, queue_size below 1 or a negative or non-finite slop.
    """

    def __init__(
        self,
        num_streams: int,
        queue_size: int,
        slop: float,
        callback: Callable[[SyncedSet], None] | None = None,
        on_drop: Callable[[Drop], None] | None = None,
    ) -> None:
        if int(num_streams) < 2:
            raise SyncError(f'ApproximateTimeSync: num_streams must be at least 2, got {num_streams}')
        if int(queue_size) < 1:
            raise SyncError(f'ApproximateTimeSync: queue_size must be at least 1, got {queue_size}')
        if not (float(slop) >= 0.0 and float(slop) < float('inf')):
            raise SyncError(f'ApproximateTimeSync: slop must be a finite number of seconds >= 0, got {slop}')
        self.num_streams = int(num_streams)
        self.queue_size = int(queue_size)
        self.slop_ns = slop_to_ns(slop)
        self.callback = callback
        self.on_drop = on_drop
        # one dict per input, stamp [ns] -> payload; dict order is the queue order (first insertion of a stamp)
        self._queues: list[dict[int, Any]] = [{} for _ in range(self.num_streams)]
        self.added = 0
        self.emitted = 0
        self.emitted_messages = 0
        self.optional: frozenset[int] = frozenset()  # streams a set may go without (a failed camera)
        self.dropped = 0  # messages dropped so far, all reasons
        self.drop_counts: Counter[str] = Counter()
        self._untaken: list[Drop] = []  # drops since the last take_drops(): bounded by the caller's draining

    def queued(self, stream: int) -> tuple[int, ...]:
        """The stamps [ns] waiting in ``stream``'s queue, in queue order."""
        return tuple(self._queues[self._check_stream(stream)])

    def _check_stream(self, stream: int) -> int:
        if not 0 <= int(stream) < self.num_streams:
            raise SyncError(f'ApproximateTimeSync: stream must be in [0, {self.num_streams}), got {stream}')
        return int(stream)

    def _drop(self, stream: int, stamp_ns: int, payload: Any, reason: str) -> None:
        drop = Drop(stream, stamp_ns, payload, reason)
        self._untaken.append(drop)
        self.dropped += 1
        self.drop_counts[reason] += 1
        if self.on_drop is not None:
            self.on_drop(drop)

    def take_drops(self) -> list[Drop]:
        """The drops (with their payloads) since the last call, oldest first; the synchroniser keeps only their
        counts (:attr:`dropped`, :attr:`drop_counts`), so a long run that drains them holds no dropped message."""
        out, self._untaken = self._untaken, []
        return out

    def add(self, stream: int, stamp_ns: int, payload: Any = None) -> SyncedSet | None:
        """Feed one message; return the set it completes, if any (also passed to ``callback``).

        Args:
            stream: input index in [0, num_streams).
            stamp_ns: the message's header stamp [ns].
            payload: anything; returned in the set or the drop.

        Raises:
            SyncError: ``stream`` is out of range.
        """
        stream = self._check_stream(stream)
        stamp = int(stamp_ns)
        queue = self._queues[stream]
        self.added += 1
        if stamp in queue:
            self._drop(stream, stamp, queue[stamp], 'superseded')
        queue[stamp] = payload
        while len(queue) > self.queue_size:
            oldest = min(queue)
            self._drop(stream, oldest, queue.pop(oldest), 'queue_overflow')
        if stamp not in queue:  # the arrival itself was the oldest of a full queue: no combination can hold it
            return None
        choice = self._search(stream, stamp)
        if choice is None:
            return None
        missing = tuple(i for i, s in enumerate(choice) if s is None)
        payloads = tuple(None if s is None else self._queues[i].pop(s) for i, s in enumerate(choice))
        result = SyncedSet(tuple(-1 if s is None else s for s in choice), payloads, missing)
        self.emitted += 1
        self.emitted_messages += len(choice) - len(missing)
        if self.callback is not None:
            self.callback(result)
        return result

    def _search(self, stream: int, stamp: int) -> list[int | None] | None:
        """First combination in message_filters' order (see the module docstring), or None.

        Streams in :attr:`optional` (other than the arriving one) are left out: None in their place.
        """
        others = [i for i in range(self.num_streams) if i != stream and i not in self.optional]
        candidates: list[list[int]] = []
        for i in others:
            near = [s for s in self._queues[i] if abs(s - stamp) <= self.slop_ns]
            if not near:
                return None
            near.sort(key=lambda s: abs(s - stamp))  # stable: ties keep queue order
            candidates.append(near)
        picked: list[int] = []

        def walk(depth: int, low: int, high: int) -> bool:
            if depth == len(candidates):
                return True
            for s in candidates[depth]:
                lo, hi = min(low, s), max(high, s)
                if hi - lo >= self.slop_ns:
                    continue
                picked.append(s)
                if walk(depth + 1, lo, hi):
                    return True
                picked.pop()
            return False

        if not walk(0, stamp, stamp):
            return None
        found = dict(zip(others, picked))
        found[stream] = stamp
        return [found.get(i) for i in range(self.num_streams)]

    def flush(self, reason: str = 'left_at_end') -> list[Drop]:
        """Drop every message still queued, oldest stamp first per stream.

        Args:
            reason: ``'left_at_end'`` (end of input) or ``'time_backwards'`` (a reset after a clock jump
                back, e.g. a bag loop: the queued stamps belong to the time before the jump).

        Returns:
            The drops of this call.

        Raises:
            SyncError: another reason.
        """
        if reason not in ('left_at_end', 'time_backwards'):
            raise SyncError(
                f"ApproximateTimeSync.flush: reason must be 'left_at_end' or 'time_backwards', got {reason!r}"
            )
        start = len(self._untaken)
        for stream, queue in enumerate(self._queues):
            for stamp in sorted(queue):
                self._drop(stream, stamp, queue[stamp], reason)
            queue.clear()
        return self._untaken[start:]

    def accounted(self) -> bool:
        """True when every added message is in an emitted set, a drop, or still queued."""
        queued = sum(len(q) for q in self._queues)
        return self.added == self.emitted_messages + self.dropped + queued


def synchronise(
    messages: Iterable[tuple[int, int, Any]], num_streams: int, queue_size: int, slop: float
) -> tuple[list[SyncedSet], list[Drop]]:
    """Run a whole arrival sequence through :class:`ApproximateTimeSync` and flush it.

    Args:
        messages: ``(stream, stamp_ns, payload)`` in arrival order.

    Returns:
        ``(sets, drops)``: the sets in emission order, the drops in the order they happened.

    Raises:
        SyncError: bad parameters or a stream index out of range.
    """
    drops: list[Drop] = []
    sync = ApproximateTimeSync(num_streams, queue_size, slop, on_drop=drops.append)
    sets: list[SyncedSet] = []
    for stream, stamp, payload in messages:
        result = sync.add(stream, stamp, payload)
        if result is not None:
            sets.append(result)
    sync.flush()
    return sets, drops
