"""Cell job kinds: thin handlers that call connectome/cells/meshes.py, hulls.py and
linking.py."""

from rest_framework import serializers

from connectome.cells.hulls import hulls_block, hulls_finish, hulls_plan, hulls_writes
from connectome.cells.linking import (
    linking_block,
    linking_finish,
    linking_plan,
    linking_writes,
)
from connectome.cells.meshes import mesh_block, mesh_finish, mesh_plan, mesh_writes
from connectome.common.validators import validate_name
from connectome.jobs.registry import BlockJobParameters, register_job
from detection.cells.hulls import MODES
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


def _dataset(job):
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return job.dataset


class SkeletonHullsParameters(BlockJobParameters):
    boundary_layer = serializers.IntegerField(
        help_text="id of a prediction (boundary probability, 1 = membrane) or mask layer")
    name = serializers.CharField(max_length=200, validators=[validate_name],
                                 help_text="name of the new segmentation layer")
    skeleton_source = serializers.CharField(
        max_length=50, required=False, allow_null=True, default=None,
        help_text="only skeletons of this source (swc, kimimaro, ...); all by default")
    segment_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=UINT64_MAX), min_length=1,
        max_length=100_000, required=False, allow_null=True, default=None,
        help_text="only the skeletons of these cells; all by default")
    mode = serializers.ChoiceField(
        choices=MODES, default="plane",
        help_text="plane: rays within each section (serial sections); 3d: in all directions")
    n_rays = serializers.IntegerField(min_value=4, max_value=4096, default=32)
    threshold = serializers.FloatField(
        min_value=0.001, max_value=1.0, default=0.5,
        help_text="a ray stops where the boundary reaches this; voxels at or above it stay 0")
    max_radius_nm = serializers.FloatField(min_value=1.0, max_value=100_000.0, default=1000.0,
                                           help_text="longest ray; the halo is twice this")
    step_nm = serializers.FloatField(
        min_value=0.01, max_value=10_000.0, required=False, allow_null=True, default=None,
        help_text="sampling step along rays; half a voxel by default")
    node_spacing_nm = serializers.FloatField(
        min_value=0.01, max_value=100_000.0, required=False, allow_null=True, default=None,
        help_text="largest distance between points along the skeleton; by default the median "
                  "node radius, within [2 voxels, max radius / 2]")
    block_shape = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=8192), min_length=3,
        max_length=3, default=[16, 1024, 1024], help_text="z, y, x voxels per block")

    def validate_segment_ids(self, value):
        return None if value is None else sorted(set(value))


@register_job("skeleton_hulls", parameters=SkeletonHullsParameters, block=hulls_block,
              finish=hulls_finish, writes=hulls_writes)
def run_skeleton_hulls(job, params, progress):
    """Paint cell hulls from the dataset's skeletons and a boundary layer (ray casting)."""
    _dataset(job)
    return hulls_plan(job, params)


class LinkSectionsParameters(BlockJobParameters):
    profiles_layer = serializers.IntegerField(
        help_text="id of a segmentation layer of per-section 2D profiles (ids per section)")
    membrane_layer = serializers.IntegerField(
        required=False, allow_null=True, default=None,
        help_text="id of a mask or prediction layer of the membrane (optional)")
    membrane_threshold = serializers.FloatField(
        min_value=0.0, max_value=1.0, default=0.5,
        help_text="a prediction's membrane: probability at or above this")
    name = serializers.CharField(max_length=200, validators=[validate_name],
                                 help_text="name of the new 3D segmentation layer")
    min_overlap = serializers.FloatField(min_value=0.001, max_value=1.0, default=0.5)
    margin_nm = serializers.FloatField(min_value=0.0, max_value=100_000.0, default=20.0)
    allow_branches = serializers.BooleanField(default=True)
    min_branch_overlap = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.25)
    slab_sections = serializers.IntegerField(
        min_value=1, max_value=4096, default=16,
        help_text="sections per block (each also reads the section before it)")
    first_id = serializers.IntegerField(
        min_value=1, max_value=UINT64_MAX, required=False, allow_null=True, default=None,
        help_text="segment id of the first linked cell; one above the dataset's largest by "
                  "default")


@register_job("link_sections", parameters=LinkSectionsParameters, block=linking_block,
              finish=linking_finish, writes=linking_writes)
def run_link_sections(job, params, progress):
    """Link per-section 2D profiles into 3D cells, slab by slab; a new segmentation layer."""
    _dataset(job)
    return linking_plan(job, params)
