"""Each process of a worker's pool gets its share of the cores for its numeric threads."""

import os
import types

from connectome import celery as worker


def test_pool_processes_share_the_cores(monkeypatch):
    assert worker.threads_per_process(16, 4) == 4
    assert worker.threads_per_process(2, 4) == 1
    assert worker.threads_per_process(8, 0) == 8
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    set_to = []
    monkeypatch.setitem(worker.sys.modules, "torch",
                        types.SimpleNamespace(set_num_threads=set_to.append))
    monkeypatch.setattr(worker, "_pool_size", 1)
    worker._remember_pool_size(instance=types.SimpleNamespace(concurrency=4))
    worker._limit_threads()
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["MKL_NUM_THREADS"] == "2"
    assert set_to == [2]


def test_an_operators_thread_count_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(worker, "_pool_size", 4)
    worker._limit_threads()
    assert os.environ["OMP_NUM_THREADS"] == "3"
