"""Validated parameters of the import and export jobs."""

from rest_framework import serializers

from connectome.common.validators import VoxelSizeSerializerField, validate_name
from connectome.datasets.models import Layer
from connectome.imports.paths import check_source_path, check_source_tree
from detection.errors import InputError


class SourcePathField(serializers.CharField):
    """A server-side file or folder to read (see :mod:`connectome.imports.paths`).

    Under ``IMPORT_ROOTS`` unless the serializer's context says ``any_path`` (a superuser, or
    the shell); stored resolved.
    """

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        try:
            path = check_source_path(value, any_path=bool(self.context.get("any_path")))
        except InputError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return str(path)

    @staticmethod
    def check_before_reading(value: str, *, any_path: bool) -> None:
        """The worker's check, just before it reads: the path and any links inside a folder."""
        check_source_tree(check_source_path(value, any_path=any_path), any_path=any_path)


class VoxelSizeField(VoxelSizeSerializerField):
    """(z, y, x) nm: three finite numbers from 1e-6 to 1e6."""


class ImportVolumeParameters(serializers.Serializer):
    source = SourcePathField(help_text="TIFF file or folder, HDF5, zarr or precomputed folder")
    name = serializers.CharField(max_length=200, help_text="layer name", validators=[validate_name])
    kind = serializers.ChoiceField(choices=Layer.Kind.choices, default=Layer.Kind.EM)
    dataset_path = serializers.CharField(
        required=False, allow_null=True, default=None,
        help_text="dataset inside an HDF5/zarr file, e.g. volumes/raw",
    )
    format = serializers.ChoiceField(
        choices=["tiff", "tiff-folder", "hdf5", "zarr", "precomputed"], required=False,
        allow_null=True, default=None,
    )
    voxel_size = VoxelSizeField(
        required=False, allow_null=True, default=None,
        help_text="(z, y, x) nm; overrides what the file states",
    )
    chunks = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=4096), min_length=3,
        max_length=3, required=False, allow_null=True, default=None,
    )
    background_id = serializers.IntegerField(
        min_value=0, required=False, allow_null=True, default=0,
        help_text="segmentations: the id that is not a cell; null makes every id a cell",
    )
    fill_missing = serializers.BooleanField(
        default=False,
        help_text="zarr/precomputed: read missing chunks as the fill value instead of failing",
    )


class ImportSkeletonsParameters(serializers.Serializer):
    source = SourcePathField(help_text="an SWC file named <segment id>.swc, or a folder of them")
    source_name = serializers.CharField(max_length=50, default="swc", validators=[validate_name])
    scale = serializers.FloatField(default=1.0, help_text="multiplies SWC coordinates to get nm")


class SkeletonizeParameters(serializers.Serializer):
    layer = serializers.IntegerField(help_text="segmentation layer id")
    segment_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, allow_null=True, default=None
    )
    min_size_voxels = serializers.IntegerField(min_value=0, default=1000)
    scale = serializers.FloatField(min_value=0, default=4.0, help_text="kimimaro TEASAR scale")
    const = serializers.FloatField(min_value=0, default=500.0, help_text="kimimaro TEASAR const, nm")


class ImportSynapsesParameters(serializers.Serializer):
    source = SourcePathField()
    table_format = serializers.ChoiceField(
        choices=["cnapse", "cave", "edges"], required=False, allow_null=True, default=None,
        help_text="detected from the header when left out",
    )
    run_name = serializers.CharField(max_length=200, validators=[validate_name])
    method = serializers.CharField(max_length=100, required=False, allow_blank=True, default="",
                                   validators=[validate_name])
    create_missing_cells = serializers.BooleanField(
        default=False, help_text="create cells for ids the dataset does not know (else an error)"
    )
    position_unit = serializers.ChoiceField(choices=["nm", "voxel"], default="nm")
    replace = serializers.BooleanField(
        default=False, help_text="replace the run of that name, in one transaction"
    )


class ExportSynapsesParameters(serializers.Serializer):
    """The table is written into the job's export folder and downloaded over the API."""

    table_format = serializers.ChoiceField(choices=["cnapse", "cave", "edges"])
    run_name = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)


class ExportSkeletonsParameters(serializers.Serializer):
    """A zip of ``<segment id>.swc`` files, written into the job's export folder."""

    source = serializers.CharField(required=False, allow_null=True, default=None,
                                   help_text="only skeletons of this source (swc, kimimaro)")
