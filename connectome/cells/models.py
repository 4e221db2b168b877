"""Cells (segments of a segmentation, or named neurons) and their skeletons."""

import io

import numpy as np
from django.db import models

from connectome.common.fields import UInt64Field
from connectome.common.validators import validate_name


class Cell(models.Model):
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.CASCADE, related_name="cells")
    segment_id = UInt64Field(help_text="id in the segmentation (full uint64 range)")
    name = models.CharField(max_length=200, blank=True, validators=[validate_name])
    cell_type = models.CharField(max_length=100, blank=True, validators=[validate_name])
    layer = models.ForeignKey(
        "datasets.Layer", null=True, blank=True, on_delete=models.SET_NULL, related_name="cells",
        help_text="segmentation layer the cell was measured in",
    )
    size_voxels = models.BigIntegerField(null=True, blank=True)
    # Bounding box in voxels, half-open [min, max).
    bbox_min_z = models.BigIntegerField(null=True, blank=True)
    bbox_min_y = models.BigIntegerField(null=True, blank=True)
    bbox_min_x = models.BigIntegerField(null=True, blank=True)
    bbox_max_z = models.BigIntegerField(null=True, blank=True)
    bbox_max_y = models.BigIntegerField(null=True, blank=True)
    bbox_max_x = models.BigIntegerField(null=True, blank=True)
    centroid_z = models.FloatField(null=True, blank=True, help_text="nm")
    centroid_y = models.FloatField(null=True, blank=True, help_text="nm")
    centroid_x = models.FloatField(null=True, blank=True, help_text="nm")

    class Meta:
        ordering = ["dataset", "segment_id"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "segment_id"], name="unique_cell_segment")
        ]
        indexes = [
            models.Index(fields=["dataset", "cell_type"], name="cell_dataset_type"),
            models.Index(fields=["dataset", "name"], name="cell_dataset_name"),
        ]

    def __str__(self):
        return self.name or str(self.segment_id)

    @property
    def bbox(self):
        if self.bbox_min_z is None:
            return None
        return (
            (self.bbox_min_z, self.bbox_min_y, self.bbox_min_x),
            (self.bbox_max_z, self.bbox_max_y, self.bbox_max_x),
        )


class Skeleton(models.Model):
    """A skeleton stored as one compressed blob of column arrays.

    A 100k-node skeleton is one row, so it loads in one query; the columns are node id,
    parent id (-1 for roots), z/y/x in nm, radius in nm and compartment (SWC type code).
    """

    cell = models.ForeignKey(Cell, on_delete=models.CASCADE, related_name="skeletons")
    source = models.CharField(max_length=50, help_text="swc import, kimimaro, ...")
    n_nodes = models.PositiveIntegerField()
    cable_length_nm = models.FloatField()
    nodes = models.BinaryField()
    source_path = models.CharField(max_length=1000, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cell", "source"], name="unique_skeleton_source")
        ]

    def __str__(self):
        return f"skeleton of {self.cell} ({self.source}, {self.n_nodes} nodes)"

    COLUMNS = ("node_id", "parent_id", "zyx", "radius", "compartment")

    @staticmethod
    def pack(node_id, parent_id, zyx, radius, compartment) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            node_id=np.asarray(node_id, dtype=np.int64),
            parent_id=np.asarray(parent_id, dtype=np.int64),
            zyx=np.asarray(zyx, dtype=np.float64).reshape(-1, 3),
            radius=np.asarray(radius, dtype=np.float32),
            compartment=np.asarray(compartment, dtype=np.int16),
        )
        return buffer.getvalue()

    def unpack(self) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(bytes(self.nodes)), allow_pickle=False) as data:
            return {name: data[name] for name in self.COLUMNS}
