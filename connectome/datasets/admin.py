from django.contrib import admin

from connectome.datasets.models import Dataset, Layer, Membership


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


class LayerInline(admin.TabularInline):
    model = Layer
    extra = 0
    fields = ["name", "kind", "dtype", "shape_z", "shape_y", "shape_x", "created_at"]
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        # Layers come from import jobs, never typed in by hand.
        return False


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "voxel_size_display", "shape_display", "owner", "is_public",
                    "n_layers", "n_cells", "n_synapses", "created_at"]
    list_filter = ["is_public"]
    search_fields = ["name", "description"]
    readonly_fields = ["shape_z", "shape_y", "shape_x", "created_at", "updated_at"]
    inlines = [MembershipInline, LayerInline]

    @admin.display(description="voxel size (nm, z y x)")
    def voxel_size_display(self, obj):
        return " x ".join(f"{v:g}" for v in obj.voxel_size)

    @admin.display(description="shape (z y x)")
    def shape_display(self, obj):
        return " x ".join(map(str, obj.shape)) if obj.shape else "-"

    @admin.display(description="layers")
    def n_layers(self, obj):
        return obj.layers.count()

    @admin.display(description="cells")
    def n_cells(self, obj):
        return obj.cells.count()

    @admin.display(description="synapses")
    def n_synapses(self, obj):
        return obj.synapses.count()


@admin.register(Layer)
class LayerAdmin(admin.ModelAdmin):
    list_display = ["name", "dataset", "kind", "dtype", "shape_display", "chunks_display",
                    "levels", "method", "created_at"]
    list_filter = ["kind", "dataset"]
    search_fields = ["name", "dataset__name", "source_path"]
    readonly_fields = [f.name for f in Layer._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.display(description="shape (z y x)")
    def shape_display(self, obj):
        return " x ".join(map(str, obj.shape))

    @admin.display(description="chunks")
    def chunks_display(self, obj):
        return " x ".join(map(str, obj.chunks))

    @admin.display(description="pyramid levels")
    def levels(self, obj):
        return len(obj.downsample_factors)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["dataset", "user", "role"]
    list_filter = ["role", "dataset"]
    autocomplete_fields = ["user", "dataset"]
