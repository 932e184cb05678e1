"""The batch-size sweep's arithmetic and flags, timed with a fake clock."""

import math

import pytest

from trainlab.diagnose.batch_sweep import batch_size_sweep, largest_free_batch, plot_batch_sweep


class FakeDevice:
    """A clock and a step whose cost is flat up to `parallel` samples, then linear (a full device)."""

    def __init__(self, parallel=16, base=0.01, oom_at=None):
        self.now, self.parallel, self.base, self.oom_at, self.calls = 0.0, parallel, base, oom_at, []

    def clock(self):
        return self.now

    def step(self, b):
        self.calls.append(b)
        if self.oom_at is not None and b >= self.oom_at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.now += self.base * max(1.0, b / self.parallel)


def test_flags_where_a_larger_batch_stops_being_free_and_computes_epoch_times():
    dev = FakeDevice(parallel=16)
    rows = batch_size_sweep(
        dev.step, dataset_size=1000, sizes=[1, 2, 4, 8, 16, 32, 64], clock=dev.clock, time_limit=1e9
    )
    assert [r["batch_size"] for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    assert [r["free"] for r in rows] == [True] * 5 + [False] * 2
    assert largest_free_batch(rows) == 16
    r16, r64 = rows[4], rows[6]
    assert r16["time_per_update"] == pytest.approx(0.01) and r64["time_per_update"] == pytest.approx(0.04)
    assert r16["samples_per_second"] == pytest.approx(1600)
    assert r16["time_per_epoch"] == pytest.approx(math.ceil(1000 / 16) * 0.01)  # 63 updates
    assert rows[5]["growth"] == pytest.approx(2.0)
    assert dev.calls.count(8) == 4  # one warm-up + three timed calls per size


def test_default_sizes_are_powers_of_two_up_to_the_dataset_and_limits_stop_the_sweep():
    dev = FakeDevice()
    rows = batch_size_sweep(dev.step, dataset_size=100, clock=dev.clock, time_limit=1e9)
    assert [r["batch_size"] for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    dev = FakeDevice(oom_at=32)
    rows = batch_size_sweep(dev.step, dataset_size=100, clock=dev.clock)
    assert rows[-1]["batch_size"] == 16 and "out of memory" in rows[-1]["stopped"]
    dev = FakeDevice(base=1.0)
    rows = batch_size_sweep(dev.step, dataset_size=100, clock=dev.clock, time_limit=10)
    assert len(rows) == 3 and "time limit" in rows[-1]["stopped"]  # 4 s per size


def test_other_errors_propagate_and_the_plot_is_written(tmp_path):
    def broken(b):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        batch_size_sweep(broken, 8)
    dev = FakeDevice(parallel=4)
    rows = batch_size_sweep(dev.step, dataset_size=64, clock=dev.clock)
    assert plot_batch_sweep(rows, tmp_path / "batch_sweep.png").read_bytes()[:4] == b"\x89PNG"
