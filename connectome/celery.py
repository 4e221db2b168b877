"""The Celery application. Workers start with ``celery -A connectome worker -Q cpu,gpu``."""

import os
import sys

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "connectome.settings")

app = Celery("connectome")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# --- threads per pool process -----------------------------------------------------------------
# PyTorch, LightGBM and BLAS each start one thread per core in every process. A worker with a
# pool of N processes would run N x cores threads on the cores, and OpenMP threads that wait
# for each other while the kernel runs another process's slow everything down (a training
# step of the synapse network took 5.4 s on two busy cores with two threads, 0.45 s with one).
# So each pool process gets cores / N threads, unless OMP_NUM_THREADS says otherwise.

_pool_size = 1


def threads_per_process(cores: int, pool_size: int) -> int:
    return max(1, cores // max(1, pool_size))


@signals.celeryd_after_setup.connect
def _remember_pool_size(sender=None, instance=None, **kwargs):
    global _pool_size
    _pool_size = int(getattr(instance, "concurrency", 1) or 1)


@signals.worker_process_init.connect
def _limit_threads(**kwargs):
    if os.environ.get("OMP_NUM_THREADS"):
        return
    threads = threads_per_process(os.cpu_count() or 1, _pool_size)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
