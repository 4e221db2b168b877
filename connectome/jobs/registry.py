"""Which job kinds exist: their parameter validation, queue and handler.

A job kind registers a DRF serializer for its parameters and a handler::

    @register_job("import_volume", parameters=ImportVolumeParameters)
    def run_import_volume(job, parameters, progress):
        ...
        return {"layer_id": layer.pk}

The handler gets the validated parameters and a :class:`~connectome.jobs.progress.Progress`
to report ``done/total`` (which is also where a cancel request stops it); what it returns is
stored as the job's result.

A block-wise kind also names a ``block`` handler and a ``finish`` handler: its main handler
plans and returns a :class:`~connectome.jobs.blocks.BlockPlan`, every box then runs as its own
task (``block(job, box, parameters) -> dict``, on any worker), and once all are done
``finish(job, parameters, say) -> Finish`` stitches them. ``writes(dataset, parameters)``
names the dataset resources (layer and run names) the job writes, so that two jobs never write
the same one at once.

A handler's work must be all or nothing (stage, then store in one transaction, as the imports
do), because a job whose worker died runs again from the start (connectome/jobs/sweep.py). A
kind for which that is not sound registers with ``rerun=False``: the sweep then fails it, and
only a person's resume runs it again.
"""

from dataclasses import dataclass
from typing import Callable

from rest_framework import serializers

from detection.errors import InputError


class BlockJobParameters(serializers.Serializer):
    """Parameters every block-wise kind takes: the queue of its block tasks and how often a
    block is tried on transient errors."""

    queue = serializers.ChoiceField(choices=["cpu", "gpu"], default="cpu",
                                    help_text="queue of the block tasks")
    max_attempts = serializers.IntegerField(
        min_value=1, max_value=20, default=3,
        help_text="attempts per block on transient errors before the job fails")


@dataclass(frozen=True)
class JobSpec:
    kind: str
    parameters: type[serializers.Serializer]
    handler: Callable
    queue: str = "cpu"
    description: str = ""
    block: Callable | None = None
    finish: Callable | None = None
    writes: Callable | None = None
    rerun: bool = True


_REGISTRY: dict[str, JobSpec] = {}


def register_job(kind: str, *, parameters, queue: str = "cpu", block=None, finish=None,
                 writes=None, rerun: bool = True):
    if (block is None) != (finish is None):
        raise InputError(f"job kind {kind!r}: a block-wise kind needs both block and finish")

    def decorator(handler):
        if kind in _REGISTRY and _REGISTRY[kind].handler is not handler:
            raise RuntimeError(f"job kind {kind!r} is registered twice")
        _REGISTRY[kind] = JobSpec(
            kind=kind, parameters=parameters, handler=handler, queue=queue,
            description=(handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else "",
            block=block, finish=finish, writes=writes, rerun=rerun,
        )
        return handler

    return decorator


_loaded = False


def _load_job_modules():
    # Job kinds live in each app's jobs.py; importing them fills the registry (once).
    global _loaded
    if _loaded:
        return
    from importlib import import_module
    from importlib.util import find_spec

    from django.apps import apps

    for config in apps.get_app_configs():
        if config.name.startswith("connectome.") and find_spec(f"{config.name}.jobs"):
            import_module(f"{config.name}.jobs")
    _loaded = True


def get_job_spec(kind: str) -> JobSpec:
    _load_job_modules()
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {known}") from None


def job_kinds() -> list[str]:
    _load_job_modules()
    return sorted(_REGISTRY)


class UnknownJobKind(InputError):
    pass
