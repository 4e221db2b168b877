"""A self-test job kind: checks that workers pick up jobs and report progress end to end."""

import time

from rest_framework import serializers

from connectome.jobs.registry import register_job


class SelfTestParameters(serializers.Serializer):
    units = serializers.IntegerField(min_value=0, max_value=100_000, default=10)
    seconds_per_unit = serializers.FloatField(min_value=0, max_value=60, default=0.1)
    fail_at = serializers.IntegerField(
        min_value=0, required=False, allow_null=True, default=None,
        help_text="raise an error at this unit, to see how failures are reported",
    )


@register_job("selftest", parameters=SelfTestParameters)
def run_selftest(job, params, progress):
    """Count through units with a delay; proves a worker runs jobs and reports progress."""
    progress.set_total(params["units"], message="counting")
    for unit in range(params["units"]):
        if params["fail_at"] is not None and unit == params["fail_at"]:
            raise RuntimeError(f"selftest failed on purpose at unit {unit}")
        time.sleep(params["seconds_per_unit"])
        progress.advance()
    return {"units": params["units"]}


class SelfTestBlocksParameters(serializers.Serializer):
    blocks = serializers.IntegerField(min_value=1, max_value=1_000_000, default=20)
    seconds_per_block = serializers.FloatField(min_value=0, max_value=60, default=0.1)
    queue = serializers.ChoiceField(choices=["cpu", "gpu"], default="cpu")


def _selftest_block(job, box, params):
    time.sleep(params["seconds_per_block"])
    return {"z": box[0].start}


def _selftest_finish(job, params, say):
    from connectome.jobs.blocks import Finish

    return Finish(result={"blocks_seen": job.blocks.filter(state="done").count()})


@register_job("selftest_blocks", parameters=SelfTestBlocksParameters, block=_selftest_block,
              finish=_selftest_finish)
def run_selftest_blocks(job, params, progress):
    """Sleep in block tasks on the workers; measures the block scheduling overhead."""
    from connectome.jobs.blocks import BlockPlan

    boxes = [((z, 0, 0), (z + 1, 1, 1)) for z in range(params["blocks"])]
    return BlockPlan(boxes=boxes, queue=params["queue"])
