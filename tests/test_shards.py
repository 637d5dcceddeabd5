"""fnnet.shards: the cut, the ranks' share of it, the gather and sum in shard order, the meeting point."""

import threading
import time

import numpy as np
import pytest

import fnnet as fn
from fnnet import shards


@pytest.mark.parametrize("n, setting, least, sizes", [
    (10, None, 4, (10,)), (10, 3, 4, (3, 3, 2, 2)), (10, 10, 4, (10,)), (0, 3, 4, (0,)),  # (an empty batch: one shard)
    (7, "auto", 4, (7,)), (8, "auto", 4, (4, 4)), (31, "auto", 4, (16, 15)), (32, "auto", 4, (8, 8, 8, 8)),
    (64, "auto", 32, (32, 32)), (10**6, "auto", 4, (15625,) * 64),  # (at most MAX_SHARDS)
])
def test_the_cut_takes_values_and_gives_sizes_that_differ_by_at_most_one(n, setting, least, sizes):
    assert shards.cut(n, setting, least) == sizes
    assert fn.train.cut is shards.cut  # (one cut, also where 0.2.0 had it)


@pytest.mark.parametrize("sizes, ranks, runs", [
    ((10,), 1, [[0]]), ((10,), 3, [[0], [], []]),  # one shard: rank 0's, the others wait
    ((3, 3, 2, 2), 1, [[0, 1, 2, 3]]), ((3, 3, 2, 2), 2, [[0, 1], [2, 3]]), ((3, 3, 2, 2), 4, [[0], [1], [2], [3]]),
    ((2,) * 6, 3, [[0, 1], [2, 3], [4, 5]]),
])
def test_each_rank_runs_an_equal_run_of_whole_shards(sizes, ranks, runs):
    assert [list(shards.rank_shards(sizes, ranks, r)) for r in range(ranks)] == runs


@pytest.mark.parametrize("sizes, ranks, message", [
    ((32, 32), 4, r"a batch of 64 rows is cut into 2 shards, which 4 ranks cannot share as whole shards \(the bits "
     r"would then depend on the ranks\): run on 1 or 2 ranks, or cut it so that they can: rows_per_shard=16 gives 4"),
    ((4, 4, 4), 2, "12 rows is cut into 3 shards, which 2 ranks cannot share .* run on 1 or 3 ranks, or cut it so "
     "that they can: rows_per_shard=6 gives 2 shards"),
    ((1, 1), 3, "2 rows is cut into 2 shards, which 3 ranks cannot share .* run on 1 or 2 ranks$"),  # (no finer cut)
])
def test_a_cut_the_ranks_cannot_share_whole_is_refused_with_what_works(sizes, ranks, message):
    with pytest.raises(fn.InvalidValueError, match=message):
        shards.rank_shards(sizes, ranks, 0)


class Ranks:
    """``size`` ranks in one process, as far as :func:`fnnet.shards.gather` and
    :func:`fnnet.shards.check_same_batch` use them: rank ``rank`` sees what every rank
    sent (``sent``: each rank's rows, or objects, in rank order)."""

    def __init__(self, rank, sent):
        self.rank, self.sent = rank, sent

    def Get_rank(self):  # noqa: N802
        return self.rank

    def Get_size(self):  # noqa: N802
        return len(self.sent)

    def Allgather(self, send, recv):  # noqa: N802
        np.testing.assert_array_equal(send, self.sent[self.rank])
        recv[...] = np.concatenate(self.sent)

    def Bcast(self, buf, root=0):  # noqa: N802
        buf[...] = self.sent[root][0]

    def allgather(self, obj):
        return [obj if r == self.rank else self.sent[r] for r in range(len(self.sent))]


@pytest.mark.parametrize("rank", [0, 1])
def test_the_gather_puts_every_ranks_shards_in_global_shard_order(rank):
    rows = np.arange(12.0).reshape(4, 3)  # (4 shards: ranks 0 and 1 run two each)
    sent = [rows[:2], rows[2:]]
    gathered = np.full((4, 3), np.nan)
    shards.gather(Ranks(rank, sent), sent[rank], gathered, 4)
    np.testing.assert_array_equal(gathered, rows)
    one = np.full((1, 3), np.nan)  # a batch of one shard: rank 0's, whatever the others hold
    shards.gather(Ranks(rank, [rows[:1], rows[:0]]), [rows[:1], rows[:0]][rank], one, 1)
    np.testing.assert_array_equal(one, rows[:1])


def test_shards_are_summed_in_shard_order():
    rows = [np.float32([1e8]), np.float32([1.0]), np.float32([-1e8])]
    total = np.float32([0.0])
    assert fn.shards.add_in_order(total, rows) is total
    assert total[0] == np.float32(np.float32(np.float32(0.0 + 1e8) + 1.0) - 1e8)  # ((g0 + g1) + g2), not sorted
    assert total[0] == 0.0  # (1.0 is lost in float32 at 1e8; the order g0, g2, g1 would give 1.0)


class Echo:
    """Ranks that all passed this rank's batch."""

    def allgather(self, obj):
        return [obj, obj]


def test_the_ranks_must_pass_the_same_batch():
    x, y = np.zeros((4, 2), np.float32), np.arange(4)
    shards.check_same_batch(Echo(), x, y)  # (the same batch: no error)
    other = "0" * 32  # (rank 1's digest: another batch)
    with pytest.raises(fn.InvalidValueError, match=r"the ranks passed different batches \(rank 0 and rank 1\)"):
        shards.check_same_batch(Ranks(0, [None, other]), x, y)


def test_a_comm_must_have_the_methods_fnnet_calls():
    with pytest.raises(fn.InvalidTypeError, match="f: comm must be an mpi4py communicator .* got int without Get_rank"):
        shards.check_comm("f", 3)


def test_shards_meet_and_combine_their_parts_in_shard_order_whatever_arrives_first():
    group, seen = shards.ShardGroup(3, threads=2), []

    def shard(i, delay):
        def run():
            time.sleep(delay)
            return group.combine("bn", i, [i], lambda parts: seen.append(list(parts)) or sum(parts, []))
        return run

    got = group.run([shard(0, 0.05), shard(1, 0.0), shard(2, 0.02)])  # (shard 1 arrives first)
    assert got == [[0, 1, 2]] * 3 and seen == [[[0], [1], [2]]]  # (combined once, in shard order)


def test_a_failing_shard_stops_the_others_at_their_meeting_point_and_its_error_is_raised():
    group, waited = shards.ShardGroup(2, threads=2), threading.Event()

    def fails():
        waited.wait(1)
        raise ValueError("shard 0 broke")

    def meets():
        waited.set()
        return group.combine("bn", 1, 1, sum)

    with pytest.raises(ValueError, match="shard 0 broke"):
        group.run([fails, meets])
    with pytest.raises(ValueError, match="a group of 2 shards got 1"):
        group.run([meets])
