import json

from django.contrib import admin
from django.utils.html import format_html

from connectome.detectors.models import DetectorModel


@admin.register(DetectorModel)
class DetectorModelAdmin(admin.ModelAdmin):
    """Detectors are made by train_detector jobs: read-only here, but for deleting one (which
    deletes its file)."""

    list_display = ["id", "name", "version", "kind", "cv_f1", "cv_precision", "cv_recall",
                    "size", "created_by", "created_at", "job"]
    list_filter = ["kind", "name"]
    search_fields = ["name"]
    fields = ["name", "version", "kind", "voxel_size", "sources_pretty", "parameters_pretty",
              "figures_pretty", "calibration_pretty", "file", "size", "created_by",
              "created_at", "job"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def _pooled(self, obj, key):
        value = obj.pooled().get(key)
        interval = obj.pooled().get(f"{key}_interval")
        if value is None:
            return "-"
        return f"{value:.2f} ({interval[0]:.2f}-{interval[1]:.2f})" if interval else f"{value:.2f}"

    @admin.display(description="CV F1 (95 %)")
    def cv_f1(self, obj):
        return self._pooled(obj, "f1")

    @admin.display(description="CV precision")
    def cv_precision(self, obj):
        return self._pooled(obj, "precision")

    @admin.display(description="CV recall")
    def cv_recall(self, obj):
        return self._pooled(obj, "recall")

    @admin.display(description="voxel size (z, y, x nm)")
    def voxel_size(self, obj):
        return ", ".join(f"{v:g}" for v in obj.voxel_size)

    @staticmethod
    def _json(value):
        return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))

    @admin.display(description="sources")
    def sources_pretty(self, obj):
        return self._json(obj.sources)

    @admin.display(description="parameters")
    def parameters_pretty(self, obj):
        return self._json(obj.parameters)

    @admin.display(description="cross-validated figures")
    def figures_pretty(self, obj):
        return self._json(obj.figures)

    @admin.display(description="calibration")
    def calibration_pretty(self, obj):
        return self._json(obj.calibration)
