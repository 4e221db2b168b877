"""Cell job kinds: thin handlers that call connectome/cells/meshes.py, hulls.py, linking.py,
cell_models.py and segmenting.py."""

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


# --- cells from EM: train_cell_model; segment_cells -> fragment_cells -> agglomerate_cells ->
# relabel_cells

from connectome.cells import cell_models, segmenting  # noqa: E402
from connectome.jobs.services import JobConflict  # noqa: E402


def _zyx(*, minimum: int, maximum: int, default, help_text: str):
    return serializers.ListField(
        child=serializers.IntegerField(min_value=minimum, max_value=maximum), min_length=3,
        max_length=3, default=default, help_text=help_text)


def _optional(field_class, help_text: str, **bounds):
    return field_class(required=False, allow_null=True, default=None, help_text=help_text,
                       **bounds)


class CellSourceParameters(serializers.Serializer):
    dataset = serializers.IntegerField()
    em_layer = serializers.IntegerField()
    labels_layer = serializers.IntegerField(
        help_text="a segmentation layer of dense cell ids, 0 boundary (membrane, no cell)")
    ignore_layer = serializers.IntegerField(required=False, allow_null=True, default=None,
                                            help_text="nonzero voxels are left out")
    roi = serializers.ListField(
        child=serializers.IntegerField(min_value=0), min_length=6, max_length=6,
        required=False, allow_null=True, default=None,
        help_text="region z0, y0, x0, z1, y1, x1 (voxels, half-open); all by default")


#: Held out along z when neither validation sources nor a fraction are given.
DEFAULT_VALIDATION_FRACTION = 0.25


class TrainCellModelParameters(serializers.Serializer):
    name = serializers.CharField(max_length=200, validators=[validate_name],
                                 help_text="model name; each training makes its next version")
    sources = serializers.ListField(child=CellSourceParameters(), min_length=1, max_length=50)
    validation = serializers.ListField(
        child=CellSourceParameters(), required=False, default=list, max_length=50,
        help_text="labelled volumes the merge threshold is chosen on (never trained on)")
    validation_fraction = _optional(
        serializers.FloatField, "without validation sources: the last slab of z of every "
        f"source, this share of its sections, validates (default {DEFAULT_VALIDATION_FRACTION})",
        min_value=0.01, max_value=0.9)
    pixel_nm = _optional(serializers.FloatField, "network pixel in-plane, nm", min_value=0.1,
                         max_value=1000)
    width = _optional(serializers.IntegerField, "channels of the first level", min_value=1,
                      max_value=256)
    depth = _optional(serializers.IntegerField, "poolings", min_value=0, max_value=5)
    long_range = _optional(serializers.IntegerField, "auxiliary offsets, network pixels "
                           "(0: none)", min_value=0, max_value=64)
    patch = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1024), min_length=3,
        max_length=3, required=False, allow_null=True, default=None,
        help_text="training patch z, y, x (network voxels)")
    batch = _optional(serializers.IntegerField, "patches per step", min_value=1, max_value=64)
    iterations = _optional(serializers.IntegerField, "training steps", min_value=1,
                           max_value=1_000_000)
    learning_rate = _optional(serializers.FloatField, "peak learning rate", min_value=1e-7,
                              max_value=1.0)
    seed = _optional(serializers.IntegerField, "random seed", min_value=0,
                     max_value=2**31 - 1)
    noise_sigma = _optional(serializers.FloatField, "augmentation noise", min_value=0,
                            max_value=10)
    missing_probability = _optional(serializers.FloatField, "chance of a blanked section",
                                    min_value=0, max_value=1)

    def validate(self, attrs):
        user = self.context.get("user")
        if attrs["validation"] and attrs.get("validation_fraction") is not None:
            raise serializers.ValidationError({"validation_fraction": [
                "give validation sources or a validation_fraction, not both"]})
        if not attrs["validation"] and attrs.get("validation_fraction") is None:
            attrs["validation_fraction"] = DEFAULT_VALIDATION_FRACTION
        try:
            cell_models.check_model_name(attrs["name"])
        except InputError as exc:
            raise serializers.ValidationError({"name": [str(exc)]}) from None
        resolved = {}
        for field in ("sources", "validation"):
            resolved[field] = []
            for index, spec in enumerate(attrs[field]):
                try:
                    resolved[field].append(cell_models.resolve_cell_source(spec, user=user))
                except InputError as exc:
                    raise serializers.ValidationError({field: {index: [str(exc)]}}) from None
        for field in ("sources", "validation"):
            try:
                cell_models.common_voxel_size(resolved["sources"] + resolved[field])
            except InputError as exc:
                raise serializers.ValidationError({field: [str(exc)]}) from None
        try:
            training, held_out = cell_models.split_volumes(
                resolved["sources"], resolved["validation"], attrs.get("validation_fraction"))
        except InputError as exc:
            raise serializers.ValidationError({"validation_fraction": [str(exc)]}) from None
        network = cell_models.network_parameters(attrs)
        minimum = cell_models.smallest_region(resolved["sources"][0].dataset.voxel_size,
                                              network)
        split = attrs.get("validation_fraction") is not None
        for role, volumes in (("sources", training), ("validation", held_out)):
            field = "sources" if split else role
            for index, volume in enumerate(volumes):
                try:
                    cell_models.check_region_size(volume, minimum)
                    cell_models.check_has_cells(volume)
                except InputError as exc:
                    raise serializers.ValidationError({field: {index: [str(exc)]}}) from None
        return attrs


def _train_cell_model_writes(dataset, params):
    """A training locks its model's name (the lock synapse detectors of that name take too:
    versions count per name) on the job's dataset, which must be a source."""
    if dataset.pk not in {s["dataset"] for s in params["sources"]}:
        raise JobConflict("train_cell_model", f"dataset '{dataset.name}' is not one of the "
                                              "training sources; submit the job on one of them")
    return [f"detector '{params['name']}'"]


@register_job("train_cell_model", parameters=TrainCellModelParameters,
              writes=_train_cell_model_writes)
def run_train_cell_model(job, params, progress):
    """Train a cell model (affinities) and choose its merge threshold on validation volumes."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    record = cell_models.train_and_store(job=job, parameters=params, progress=progress)
    chosen = record.figures.get("chosen") or {}
    return {"detector_id": record.pk, "name": record.name, "version": record.version,
            "threshold": record.figures["threshold"], "voi_split": chosen.get("voi_split"),
            "voi_merge": chosen.get("voi_merge"), "arand": chosen.get("arand"),
            "training_s": record.figures["training"].get("seconds")}


class _ChainParameters(BlockJobParameters):
    name = serializers.CharField(max_length=200, default="cells", validators=[validate_name],
                                 help_text="name of the new segmentation layer")
    affinities_layer = serializers.CharField(
        max_length=190, required=False, default="", allow_blank=True,
        validators=[validate_name],
        help_text="the affinity layers are named '<this> z', '<this> y' and '<this> x'; "
                  "'<name> affinities' by default")


CONTEXT_HELP = ("voxels (z, y, x) of the neighbours' affinities each block's watershed sees, "
                "and of their fragments and affinities its agglomeration sees")


class SegmentCellsParameters(_ChainParameters):
    em_layer = serializers.IntegerField()
    model_id = serializers.IntegerField(
        required=False, allow_null=True, default=None,
        help_text="a cell model (/api/detectors/?kind=affinities); the newest one trained at "
                  "the dataset's voxel size by default")
    threshold = serializers.FloatField(
        min_value=0, max_value=1, required=False, allow_null=True, default=None,
        help_text="merge threshold (1 - mean affinity); the model's own by default")
    block_shape = _zyx(minimum=1, maximum=4096, default=[32, 256, 256],
                       help_text="z, y, x voxels per block (rounded up to the network's grid)")
    context = _zyx(minimum=0, maximum=4096, default=[8, 64, 64], help_text=CONTEXT_HELP)

    def validate(self, attrs):
        if attrs.get("model_id") is not None:
            try:
                segmenting.cell_model_record(attrs["model_id"], user=self.context.get("user"))
            except InputError as exc:
                raise serializers.ValidationError({"model_id": [str(exc)]}) from None
        return attrs


@register_job("segment_cells", parameters=SegmentCellsParameters,
              block=segmenting.segment_block, finish=segmenting.segment_finish,
              writes=segmenting.segment_writes)
def run_segment_cells(job, params, progress):
    """Segment cells from EM block-wise: affinities, then fragment_cells."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return segmenting.segment_plan(job, params)


class FragmentCellsParameters(_ChainParameters):
    segment_job = serializers.IntegerField(help_text="the segment_cells job whose affinities "
                                                     "are cut into fragments")
    threshold = serializers.FloatField(min_value=0, max_value=1,
                                       help_text="merge threshold (1 - mean affinity)")
    context = _zyx(minimum=0, maximum=4096, default=[8, 64, 64], help_text=CONTEXT_HELP)


@register_job("fragment_cells", parameters=FragmentCellsParameters,
              block=segmenting.fragment_block, finish=segmenting.fragment_finish,
              writes=segmenting.fragment_writes)
def run_fragment_cells(job, params, progress):
    """Cut the affinities into fragments block-wise (seeing a margin), then agglomerate_cells."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return segmenting.fragment_plan(job, params)


class AgglomerateCellsParameters(_ChainParameters):
    fragment_job = serializers.IntegerField(help_text="the fragment_cells job whose fragments "
                                                      "are agglomerated")
    threshold = serializers.FloatField(min_value=0, max_value=1,
                                       help_text="merge threshold (1 - mean affinity)")
    context = _zyx(minimum=0, maximum=4096, default=[8, 64, 64], help_text=CONTEXT_HELP)


@register_job("agglomerate_cells", parameters=AgglomerateCellsParameters,
              block=segmenting.agglomerate_block, finish=segmenting.agglomerate_finish,
              writes=segmenting.agglomerate_writes)
def run_agglomerate_cells(job, params, progress):
    """Merge fragments block-wise with context, stitch the merges, then relabel_cells."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return segmenting.agglomerate_plan(job, params)


class RelabelCellsParameters(_ChainParameters):
    agglomerate_job = serializers.IntegerField(help_text="the agglomerate_cells job whose "
                                                         "stitched cells are written")


@register_job("relabel_cells", parameters=RelabelCellsParameters,
              block=segmenting.relabel_block, finish=segmenting.relabel_finish,
              writes=segmenting.relabel_writes)
def run_relabel_cells(job, params, progress):
    """Write the cells block-wise; store the segmentation, affinity layers and Cell rows."""
    if job.dataset is None:
        raise InputError(f"{job.kind} job {job.pk} has no dataset")
    return segmenting.relabel_plan(job, params)
