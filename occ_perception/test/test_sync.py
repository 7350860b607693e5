"""The approximate-time synchroniser against message_filters' rule (ROS 2 Python ApproximateTimeSynchronizer).

Hand-built streams: expected sets derived by following the rule step by step
(comments give the reasoning). Randomised streams: compared against a direct
transcription of the documented rule below (full product of the filtered,
sorted candidate lists, first combination in itertools order), written
independently of the depth-first search in sync.py.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from occ_perception.sync import (
    DROP_REASONS,
    ApproximateTimeSync,
    Drop,
    SyncedSet,
    SyncError,
    synchronise,
)

MS = 1_000_000


def _sets(sets: list[SyncedSet]) -> list[tuple[int, ...]]:
    return [s.stamps_ns for s in sets]


def _check_accounting(messages, sets, drops, num_streams):
    """Every input (stream, stamp, payload) is in exactly one set or exactly one drop."""
    used = Counter()
    for s in sets:
        assert len(s.payloads) == num_streams
        for stream, (stamp, payload) in enumerate(zip(s.stamps_ns, s.payloads)):
            used[(stream, stamp, payload)] += 1
    for d in drops:
        assert d.reason in DROP_REASONS
        used[(d.stream, d.stamp_ns, d.payload)] += 1
    assert used == Counter((st, ts, p) for st, ts, p in messages)


def test_newest_arrival_picks_the_nearest_stamps_not_the_oldest():
    msgs = [
        (0, 0, 'a0'),
        (1, 50 * MS, 'b50'),  # b50: stream 0 has 0 (50 ms away), spread 50 < 100 -> set
        (0, 200 * MS, 'a200'),
        (0, 300 * MS, 'a300'),  # wait in stream 0
        (1, 260 * MS, 'b260'),
    ]  # candidates 300 (40 ms) then 200 (60 ms): 300 first, spread 40 -> set
    sets, drops = synchronise(msgs, 2, queue_size=10, slop=0.1)
    assert _sets(sets) == [(0, 50 * MS), (300 * MS, 260 * MS)]
    assert sets[1].payloads == ('a300', 'b260')
    assert drops == [Drop(0, 200 * MS, 'a200', 'left_at_end')]
    _check_accounting(msgs, sets, drops, 2)


def test_first_combination_in_product_order_wins_over_a_tighter_one():
    # arrival on stream 2 at 100: stream 0 candidates by distance [60 (40), 150 (50)],
    # stream 1 [190 (90), 5 (95)]; product order: (60, 190) spread 130 >= 100 fails,
    # (60, 5) spread 95 < 100 succeeds, although (150, 190) would spread only 90.
    msgs = [(0, 60 * MS, 'a'), (0, 150 * MS, 'b'), (1, 5 * MS, 'c'), (1, 190 * MS, 'd'), (2, 100 * MS, 'e')]
    sets, drops = synchronise(msgs, 3, queue_size=5, slop=0.1)
    assert _sets(sets) == [(60 * MS, 5 * MS, 100 * MS)]
    assert sorted((d.stream, d.stamp_ns) for d in drops) == [(0, 150 * MS), (1, 190 * MS)]
    _check_accounting(msgs, sets, drops, 3)


def test_equal_distances_keep_queue_order_and_a_replaced_stamp_keeps_its_place():
    # stream 1 holds 40 and 160, both 60 ms from the arrival at 100; stream 2 holds 130.
    # The stable sort keeps queue order, so the first-queued of 40/160 is taken.
    first_160 = [(1, 160 * MS, 'x'), (1, 40 * MS, 'y'), (2, 130 * MS, 'z'), (0, 100 * MS, 'w')]
    sets, _ = synchronise(first_160, 3, queue_size=5, slop=0.1)
    assert _sets(sets) == [(100 * MS, 160 * MS, 130 * MS)]
    # 40 queued first, then 160, then 40 again (replaces the first 40, which is dropped as superseded,
    # but the stamp keeps its first place in the queue), so 40 wins the tie.
    msgs = [(1, 40 * MS, 'y1'), (1, 160 * MS, 'x'), (1, 40 * MS, 'y2'), (2, 130 * MS, 'z'), (0, 100 * MS, 'w')]
    sets, drops = synchronise(msgs, 3, queue_size=5, slop=0.1)
    assert _sets(sets) == [(100 * MS, 40 * MS, 130 * MS)]
    assert sets[0].payloads == ('w', 'y2', 'z')
    assert drops == [Drop(1, 40 * MS, 'y1', 'superseded'), Drop(1, 160 * MS, 'x', 'left_at_end')]
    _check_accounting(msgs, sets, drops, 3)


def test_overflow_drops_the_oldest_stamp_even_the_arrival_itself():
    # queue_size 2: stream 0 gets 0, 100, 200 -> 0 is pushed out.
    msgs = [
        (0, 0, 'a'),
        (0, 100 * MS, 'b'),
        (0, 200 * MS, 'c'),
        (0, 50 * MS, 'late'),  # older than everything in the full queue: pushed out at once, never matched
        (1, 60 * MS, 'd'),  # 100 is 40 ms away: set (100, 60); 50 would have been nearer but is gone
    ]
    sets, drops = synchronise(msgs, 2, queue_size=2, slop=0.05)
    assert _sets(sets) == [(100 * MS, 60 * MS)]
    assert drops == [
        Drop(0, 0, 'a', 'queue_overflow'),
        Drop(0, 50 * MS, 'late', 'queue_overflow'),
        Drop(0, 200 * MS, 'c', 'left_at_end'),
    ]
    _check_accounting(msgs, sets, drops, 2)


def test_slop_bounds_candidates_inclusively_and_the_spread_strictly():
    # |s - t| == slop passes the candidate filter, but the spread must be strictly below slop.
    sets, drops = synchronise([(0, 0, 'a'), (1, 100 * MS, 'b')], 2, queue_size=3, slop=0.1)
    assert sets == [] and [d.reason for d in drops] == ['left_at_end'] * 2
    sets, _ = synchronise([(0, 0, 'a'), (1, 99 * MS, 'b')], 2, queue_size=3, slop=0.1)
    assert _sets(sets) == [(0, 99 * MS)]


def test_only_the_arrival_triggers_a_search():
    # 0@0 and 1@500 never match; 1@30 arrives and matches 0@0; a pair that could match among older
    # messages is not searched when an unrelated message arrives.
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.1)
    assert sync.add(1, 500 * MS, 'far') is None
    out = sync.add(1, 30 * MS, 'near')  # stream 0 is empty: nothing
    assert out is None
    out = sync.add(0, 0, 'zero')  # candidates in stream 1: 30 (30 ms); 500 is beyond slop
    assert out is not None and out.stamps_ns == (0, 30 * MS) and out.payloads == ('zero', 'near')
    assert sync.queued(1) == (500 * MS,) and sync.accounted()


def test_callbacks_and_parameter_errors():
    got, dropped = [], []
    sync = ApproximateTimeSync(2, 1, 0.05, callback=got.append, on_drop=dropped.append)
    sync.add(0, 0, 'a')
    sync.add(0, 10 * MS, 'b')  # queue_size 1: 'a' overflows
    sync.add(1, 12 * MS, 'c')
    assert [s.payloads for s in got] == [('b', 'c')] and dropped == [Drop(0, 0, 'a', 'queue_overflow')]
    assert sync.drop_counts == Counter({'queue_overflow': 1})
    with pytest.raises(SyncError, match='stream'):
        sync.add(2, 0, 'x')
    bad_arguments = [(1, 1, 0.1), (2, 0, 0.1), (2, 1, -1.0), (2, 1, float('nan'))]
    for num_streams, queue_size, slop in bad_arguments:
        with pytest.raises(SyncError):
            ApproximateTimeSync(num_streams, queue_size, slop)


# ---------------------------------------------------------------------------
# randomised: seven streams (six cameras and the pose) against a transcription of the rule


def reference_run(messages, num_streams, queue_size, slop):
    """message_filters' rule transcribed literally: dict queues, filter, sort, full product, first fit."""
    slop_ns = int(slop * 1e9)
    queues = [{} for _ in range(num_streams)]
    sets, drops = [], []
    for stream, stamp, payload in messages:
        q = queues[stream]
        if stamp in q:
            drops.append((stream, stamp, q[stamp], 'superseded'))
        q[stamp] = payload
        while len(q) > queue_size:
            oldest = min(q)
            drops.append((stream, oldest, q.pop(oldest), 'queue_overflow'))
        lists = []
        for other in range(num_streams):
            if other == stream:
                continue
            cands = sorted(
                [(s, abs(s - stamp)) for s in queues[other] if not abs(s - stamp) > slop_ns], key=lambda x: x[1]
            )
            if not cands:
                lists = None
                break
            lists.append([s for s, _ in cands])
        if lists is None:
            continue
        for combo in itertools.product(*lists):
            vv = list(combo)
            vv.insert(stream, stamp)
            if max(vv) - min(vv) < slop_ns and all(t in queues[i] for i, t in enumerate(vv)):
                sets.append((tuple(vv), tuple(queues[i].pop(t) for i, t in enumerate(vv))))
                break
    for stream, q in enumerate(queues):
        for stamp in sorted(q):
            drops.append((stream, stamp, q[stamp], 'left_at_end'))
    return sets, drops


def camera_streams(rng: random.Random, frames: int, missing_camera: bool):
    """Six 12 Hz cameras fired 8 ms apart and a 50 Hz pose, with jitter, duplicates, gaps and shuffled arrival."""
    period = 83 * MS
    events = []
    n = 0
    dead = rng.randrange(6) if missing_camera else None
    for k in range(frames):
        for cam in range(6):
            if cam == dead or rng.random() < 0.08:  # a dead camera or a lost frame
                continue
            stamp = k * period + cam * 8 * MS + rng.randint(-3, 3) * MS
            copies = 2 if rng.random() < 0.05 else 1  # a duplicated message (same stamp, new payload)
            for _ in range(copies):
                n += 1
                events.append((stamp + rng.randint(0, 40) * MS, cam, stamp, f'c{cam}-{n}'))
    for j in range(frames * 4):
        stamp = j * 20 * MS + rng.randint(-1, 1) * MS
        n += 1
        events.append((stamp + rng.randint(0, 5) * MS, 6, stamp, f'p-{n}'))
    events.sort(key=lambda e: e[0])  # arrival order: stamp plus a random transport delay
    return [(stream, stamp, payload) for _, stream, stamp, payload in events]


@pytest.mark.parametrize('seed', range(12))
def test_random_streams_match_the_reference_and_account_for_every_message(seed):
    rng = random.Random(seed)
    messages = camera_streams(rng, frames=25, missing_camera=seed % 4 == 3)
    queue_size = rng.choice([1, 2, 3, 5])
    slop = rng.choice([0.05, 0.06, 0.08])
    sets, drops = synchronise(messages, 7, queue_size, slop)
    ref_sets, ref_drops = reference_run(messages, 7, queue_size, slop)
    assert [(s.stamps_ns, s.payloads) for s in sets] == ref_sets
    assert [(d.stream, d.stamp_ns, d.payload, d.reason) for d in drops] == ref_drops
    _check_accounting(messages, sets, drops, 7)
    assert all(s.spread_ns < int(slop * 1e9) for s in sets)
    if seed % 4 == 3:
        assert sets == []  # a dead camera: no complete set
    print(
        f'seed {seed}: q={queue_size} slop={slop}: {len(messages)} messages, {len(sets)} sets, '
        f'drops {dict(Counter(d.reason for d in drops))}'
    )


def test_random_streams_produce_sets_and_every_drop_reason():
    totals = Counter()
    n_sets = 0
    for seed in range(6):
        rng = random.Random(100 + seed)
        messages = camera_streams(rng, frames=25, missing_camera=False)
        sets, drops = synchronise(messages, 7, 3, 0.05)
        n_sets += len(sets)
        totals.update(d.reason for d in drops)
    # time_backwards only comes from a caller's flush('time_backwards') (test below)
    assert n_sets > 50 and set(totals) == set(DROP_REASONS) - {'time_backwards'}


def test_flush_after_time_went_backwards_drops_the_queued_messages_with_that_reason():
    sync = ApproximateTimeSync(3, 3, 0.05)
    sync.add(0, 10, 'a')
    sync.add(1, 20, 'b')
    drops = sync.flush('time_backwards')
    assert [(d.stream, d.stamp_ns, d.reason) for d in drops] == [(0, 10, 'time_backwards'), (1, 20, 'time_backwards')]
    assert sync.accounted() and sync.queued(0) == ()
    with pytest.raises(SyncError, match='reason'):
        sync.flush('superseded')


def test_an_optional_stream_is_left_out_of_the_set_and_its_queue_stays() -> None:
    """Streams in ``optional`` are not searched: the set goes without them (stamp -1, payload None), their
    queued messages stay and are accounted, and a set with every stream forms once they are required again."""
    sync = ApproximateTimeSync(3, queue_size=2, slop=0.05)
    ms = 1_000_000
    assert sync.add(2, 100 * ms, 'old') is None  # stream 2 has one old message
    sync.optional = frozenset({2})
    assert sync.add(0, 500 * ms, 'a') is None
    got = sync.add(1, 510 * ms, 'b')
    assert got is not None and got.stamps_ns == (500 * ms, 510 * ms, -1) and got.payloads == ('a', 'b', None)
    assert got.missing == (2,) and got.spread_ns == 10 * ms
    assert sync.queued(2) == (100 * ms,) and sync.accounted()
    sync.optional = frozenset()
    assert sync.add(0, 1000 * ms, 'c') is None and sync.add(1, 1000 * ms, 'd') is None
    full = sync.add(2, 1010 * ms, 'e')
    assert full is not None and full.missing == () and full.payloads == ('c', 'd', 'e')
    assert sync.emitted == 2 and sync.emitted_messages == 5 and sync.accounted()


class _Message:
    """A payload that can be watched for garbage collection."""

    def __init__(self, stamp: int) -> None:
        self.stamp = stamp


def test_a_long_run_holds_no_dropped_message():
    """100 s at 12 Hz of one camera against 100 Hz odometry (queue 3): thousands of queue_overflow drops. Each is
    handed out once by take_drops() and then no longer held: only counts remain, so memory stays flat."""
    import gc
    import weakref

    sync = ApproximateTimeSync(2, queue_size=3, slop=0.02)
    watched: list[weakref.ref] = []
    taken: Counter[str] = Counter()
    events = sorted([(i * 10 * MS, 1) for i in range(10_000)] + [(i * 83 * MS + 1, 0) for i in range(1_200)])
    for stamp, stream in events:
        message = _Message(stamp)
        watched.append(weakref.ref(message))
        sync.add(stream, stamp, message)
        del message
        taken.update(d.reason for d in sync.take_drops())
    sync.flush()
    taken.update(d.reason for d in sync.take_drops())
    assert sync.take_drops() == []
    assert taken == sync.drop_counts and sum(taken.values()) == sync.dropped > 8_000
    assert sync.accounted() and sync.emitted > 1_000
    gc.collect()
    assert sum(ref() is not None for ref in watched) == 0  # emitted sets and drops were released by the caller
