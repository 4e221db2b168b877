"""Cell job kinds: thin handlers that call connectome/cells/meshes.py."""

from rest_framework import serializers

from connectome.cells.meshes import mesh_block, mesh_finish, mesh_plan, mesh_writes
from connectome.jobs.registry import BlockJobParameters, register_job
from detection.errors import InputError

UINT64_MAX = 2**64 - 1


class MeshSegmentationParameters(BlockJobParameters):
    segmentation_layer = serializers.IntegerField(help_text="id of a segmentation layer")
    segment_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=UINT64_MAX), min_length=1,
        max_length=100_000, required=False, allow_null=True, default=None,
        help_text="mesh these segments only (the others keep their meshes); all by default")
    level = serializers.IntegerField(
        min_value=0, max_value=20, default=0,
        help_text="pyramid level to mesh: 0 full resolution, 1 the first downsampled, ...")
    simplification_factor = serializers.IntegerField(
        min_value=0, max_value=1000, default=10,
        help_text="simplify each fragment to about 1/factor of its triangles; 0: none")
    max_simplification_error = serializers.FloatField(
        min_value=0, max_value=1e6, required=False, allow_null=True, default=None,
        help_text="nm a vertex may move when simplified; none: about one voxel")
    block_shape = serializers.ListField(
        child=serializers.IntegerField(min_value=2, max_value=4096), min_length=3,
        max_length=3, default=[64, 256, 256], help_text="z, y, x voxels of the level per block")

    def validate_segment_ids(self, value):
        return None if value is None else sorted(set(value))


@register_job("mesh_segmentation", parameters=MeshSegmentationParameters, block=mesh_block,
              finish=mesh_finish, writes=mesh_writes)
def run_mesh_segmentation(job, params, progress):
    """Mesh a segmentation's cells block-wise (zmesh) as Neuroglancer precomputed meshes."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return mesh_plan(job, params)
