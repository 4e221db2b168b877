from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from connectome.datasets.models import Dataset, Layer, Membership
from connectome.datasets.selectors import has_role
from connectome.jobs.services import job_create


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
    actions = ["detect_synapses"]

    def get_form(self, request, obj=None, **kwargs):
        # The current run is chosen among this dataset's runs (the request carries which:
        # the admin object is shared by every request).
        request.dataset_being_edited = obj
        return super().get_form(request, obj, **kwargs)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "current_run":
            from connectome.synapses.models import SynapseRun

            dataset = getattr(request, "dataset_being_edited", None)
            kwargs["queryset"] = (SynapseRun.objects.none() if dataset is None
                                  else SynapseRun.objects.filter(dataset=dataset))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.action(description="Detect synapses (block-wise job on the workers)")
    def detect_synapses(self, request, queryset):
        from connectome.pipeline.forms import DetectionForm

        if queryset.count() != 1:
            self.message_user(request, "select exactly one dataset", messages.ERROR)
            return None
        dataset = queryset.get()
        if not (request.user.is_superuser
                or has_role(dataset=dataset, user=request.user, role=Membership.Role.ADMIN)):
            self.message_user(request, f"running jobs on '{dataset.name}' needs its admin role",
                              messages.ERROR)
            return None
        if "apply" in request.POST:
            form = DetectionForm(request.POST, dataset=dataset, user=request.user)
            if form.is_valid():
                job = job_create(kind=form.cleaned_data["kind"], dataset=dataset,
                                 parameters=form.cleaned_data["parameters"], user=request.user)
                link = reverse("admin:jobs_job_change", args=[job.pk])
                self.message_user(request, format_html(
                    '{} job <a href="{}">{}</a> queued', job.kind, link, job.pk), messages.SUCCESS)
                return None
        else:
            form = DetectionForm(dataset=dataset, user=request.user)
        return TemplateResponse(request, "admin/pipeline/detect_synapses.html", {
            **self.admin_site.each_context(request), "title": "Detect synapses",
            "dataset": dataset, "form": form, "selected_name": helpers.ACTION_CHECKBOX_NAME,
        })

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
