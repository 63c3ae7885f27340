"""Per-class (SML-style) standardisation: hand example, fallback, floor, round trip, all_reduce."""

import math
import os

import pytest
import torch

from cosme_ros.anomaly.standardize import ClassStats, ClassStatsAccumulator

# class 0: 1, 2, 3 → mean 2, std √(2/3); class 1: 10, 20 → mean 15, std 5; class 2: no pixel.
# pooled over 1, 2, 3, 10, 20: mean 7.2, E[v²] = 102.8, std √(102.8 − 7.2²) = √50.96.
VALUES = torch.tensor([[[1.0, 2.0, 3.0], [10.0, 20.0, 1000.0]]])
PRED = torch.tensor([[[0, 0, 0], [1, 1, 1]]])
VALID = torch.tensor([[[True, True, True], [True, True, False]]])  # 1000 is ignored
POOLED_STD = math.sqrt(50.96)


def _acc():
    acc = ClassStatsAccumulator(3)
    acc.update(VALUES, PRED, VALID)
    return acc


def test_hand_example_with_pooled_fallback():
    stats = _acc().finalize()
    torch.testing.assert_close(stats.mean, torch.tensor([2.0, 15.0, 7.2]))
    torch.testing.assert_close(stats.std, torch.tensor([math.sqrt(2 / 3), 5.0, POOLED_STD]))
    assert stats.fallback.tolist() == [False, False, True]
    assert stats.count.tolist() == [3.0, 2.0, 0.0]
    z = stats.standardize(torch.tensor([[4.0, 20.0, 7.2]]), torch.tensor([[0, 1, 2]]))
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, torch.tensor([[2 / math.sqrt(2 / 3), 1.0, 0.0]]))


def test_min_count_sends_small_classes_to_the_pooled_statistics():
    stats = _acc().finalize(min_count=3)
    torch.testing.assert_close(stats.mean, torch.tensor([2.0, 7.2, 7.2]))
    torch.testing.assert_close(stats.std, torch.tensor([math.sqrt(2 / 3), POOLED_STD, POOLED_STD]))
    assert stats.fallback.tolist() == [False, True, True]


def test_std_floor_for_constant_class():
    acc = ClassStatsAccumulator(2)
    acc.update(torch.tensor([[5.0, 5.0, 0.0, 10.0]]), torch.tensor([[0, 0, 1, 1]]))
    stats = acc.finalize()  # pooled std of 5, 5, 0, 10 is √12.5
    torch.testing.assert_close(stats.std, torch.tensor([1e-3 * math.sqrt(12.5), 5.0]))
    assert torch.isfinite(stats.standardize(torch.tensor([6.0]), torch.tensor([0]))).all()
    torch.testing.assert_close(acc.finalize(std_floor=0.5).std, torch.tensor([0.5, 5.0]))


def test_batches_accumulate_like_one():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 8, 8, generator=g) * 3 + 1
    p = torch.randint(0, 5, (4, 8, 8), generator=g)
    one = ClassStatsAccumulator(5)
    one.update(v, p)
    two = ClassStatsAccumulator(5)
    two.update(v[:1], p[:1])
    two.update(v[1:], p[1:])
    a, b = one.finalize(), two.finalize()
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.std, b.std)
    for c in range(5):
        sel = v[p == c].double()
        torch.testing.assert_close(a.mean[c], sel.mean().float())
        torch.testing.assert_close(a.std[c], sel.std(unbiased=False).float())


def test_bad_inputs():
    acc = ClassStatsAccumulator(2)
    with pytest.raises(ValueError, match="class ids"):
        acc.update(torch.zeros(1, 2), torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(torch.tensor([[float("nan"), 0.0]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.zeros(1, 2), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no training pixels"):
        ClassStatsAccumulator(2).finalize()


def test_round_trip_and_validation():
    stats = _acc().finalize()
    d = stats.to_tensors("sml.")
    assert set(d) == {"sml.mean", "sml.std", "sml.count", "sml.fallback"}
    back = ClassStats.from_tensors(d, "sml.")
    for name in ("mean", "std", "count", "fallback"):
        assert torch.equal(getattr(back, name), getattr(stats, name)), name
    minimal = ClassStats.from_tensors({"mean": stats.mean, "std": stats.std})
    assert minimal.count is None and torch.equal(minimal.std, stats.std)

    with pytest.raises(ValueError, match="'sml.std'"):
        ClassStats.from_tensors({"sml.mean": stats.mean}, "sml.")
    with pytest.raises(ValueError, match="'sml.std'"):
        ClassStats.from_tensors({**d, "sml.std": stats.std[:2]}, "sml.")
    with pytest.raises(ValueError, match="'sml.mean'"):
        ClassStats.from_tensors({**d, "sml.mean": stats.mean.reshape(1, 3)}, "sml.")
    with pytest.raises(ValueError, match="'sml.std'"):
        ClassStats.from_tensors({**d, "sml.std": torch.zeros(3)}, "sml.")
    with pytest.raises(ValueError, match="'sml.fallback'"):
        ClassStats.from_tensors({**d, "sml.fallback": torch.zeros(2, dtype=torch.bool)}, "sml.")


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        acc = ClassStatsAccumulator(3)
        # rank 0 holds the first row of the hand example, rank 1 the second (with the ignored 1000)
        acc.update(VALUES[:, rank : rank + 1], PRED[:, rank : rank + 1], VALID[:, rank : rank + 1])
        acc.all_reduce()
        torch.save(acc.finalize().to_tensors(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_processes(tmp_path):
    import torch.multiprocessing as mp

    acc = ClassStatsAccumulator(3)
    acc.all_reduce()  # no process group: a no-op
    mp.spawn(_dist_worker, nprocs=2, join=True, args=(2, str(tmp_path / "init"), str(tmp_path)))
    ref = _acc().finalize().to_tensors()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k in ref:
            assert torch.equal(got[k], ref[k]), (rank, k)
