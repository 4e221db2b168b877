from django.contrib import admin

from connectome.cells.models import Cell, Skeleton


@admin.register(Cell)
class CellAdmin(admin.ModelAdmin):
    list_display = ["segment_id", "name", "cell_type", "dataset", "size_voxels", "centroid_display"]
    list_filter = ["dataset", "cell_type"]
    search_fields = ["name", "cell_type"]
    list_select_related = ["dataset"]
    readonly_fields = ["layer", "size_voxels", "bbox_min_z", "bbox_min_y", "bbox_min_x",
                       "bbox_max_z", "bbox_max_y", "bbox_max_x", "centroid_z", "centroid_y",
                       "centroid_x"]
    show_full_result_count = False

    def get_search_results(self, request, queryset, search_term):
        queryset, distinct = super().get_search_results(request, queryset, search_term)
        if search_term.isdigit() and int(search_term) < 2**64:
            queryset |= self.model.objects.filter(segment_id=int(search_term))
        return queryset, distinct

    @admin.display(description="centroid (nm, z y x)")
    def centroid_display(self, obj):
        if obj.centroid_z is None:
            return "-"
        return f"{obj.centroid_z:.0f}, {obj.centroid_y:.0f}, {obj.centroid_x:.0f}"


@admin.register(Skeleton)
class SkeletonAdmin(admin.ModelAdmin):
    list_display = ["cell", "source", "n_nodes", "cable_length_nm", "created_at"]
    list_filter = ["source", "cell__dataset"]
    exclude = ["nodes"]
    readonly_fields = ["cell", "source", "n_nodes", "cable_length_nm", "source_path",
                       "parameters", "created_at"]
    list_select_related = ["cell"]

    def has_add_permission(self, request):
        return False
