from django import forms
from django.contrib import admin
from django.db import transaction

from connectome.review.models import (
    DatasetReviewTag,
    Review,
    ReviewBatch,
    ReviewClaim,
    ReviewSkip,
    ReviewTag,
)
from connectome.review.services import BatchInputError, review_batch_create
from connectome.synapses.models import SynapseRun


class ReviewTagInline(admin.TabularInline):
    model = ReviewTag
    extra = 0


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["synapse", "verdict", "reviewer", "order", "created_at"]
    list_filter = ["verdict", "order", "reviewer", "synapse__dataset", "tags__name"]
    raw_id_fields = ["synapse", "corrected_pre", "corrected_post"]
    search_fields = ["note"]
    inlines = [ReviewTagInline]


@admin.register(ReviewClaim)
class ReviewClaimAdmin(admin.ModelAdmin):
    """Deleting a claim here hands its synapse back to the queue at once."""

    list_display = ["synapse", "reviewer", "dataset", "order", "expires_at", "created_at"]
    list_filter = ["dataset", "reviewer"]
    raw_id_fields = ["synapse"]


@admin.register(ReviewSkip)
class ReviewSkipAdmin(admin.ModelAdmin):
    """Deleting a skip offers the synapse to that reviewer again."""

    list_display = ["synapse", "reviewer", "created_at"]
    list_filter = ["reviewer", "synapse__dataset"]
    raw_id_fields = ["synapse"]


@admin.register(DatasetReviewTag)
class DatasetReviewTagAdmin(admin.ModelAdmin):
    """A dataset's tag set: once it has one, its reviews take only these tags."""

    list_display = ["name", "dataset", "description"]
    list_filter = ["dataset"]


class ReviewBatchAddForm(forms.ModelForm):
    """A new batch: its synapses by run and count, by a box, or by ids (one of the three), as
    :func:`connectome.review.services.review_batch_create` takes them."""

    run = forms.ModelChoiceField(SynapseRun.objects.all(), required=False)
    count = forms.IntegerField(required=False, min_value=1)
    bbox = forms.CharField(required=False, label="Box (nm)",
                           help_text="z0,y0,x0,z1,y1,x1, inclusive")
    synapse_ids = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                  label="Synapse ids", help_text="separated by commas or spaces")

    class Meta:
        model = ReviewBatch
        fields = ["dataset", "name", "reviewer"]

    user = None  # the admin user, set by ReviewBatchAdmin.get_form
    batch = None

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        bbox = ids = None
        if data.get("bbox"):
            try:
                values = [float(v) for v in data["bbox"].replace(",", " ").split()]
            except ValueError:
                values = []
            if len(values) != 6:
                self.add_error("bbox", "a box is six numbers z0,y0,x0,z1,y1,x1 (nm)")
                return data
            bbox = (values[:3], values[3:])
        if data.get("synapse_ids"):
            parts = data["synapse_ids"].replace(",", " ").split()
            bad = [p for p in parts if not p.isdigit()]
            if bad:
                self.add_error("synapse_ids", f"synapse ids: '{bad[0]}' is not an id")
                return data
            ids = [int(p) for p in parts]
        fields = {"name": "name", "reviewer": "reviewer", "run": "run", "count": "count",
                  "bbox": "bbox", "synapses": "synapse_ids"}
        try:
            with transaction.atomic():
                self.batch = review_batch_create(
                    dataset=data["dataset"], name=data["name"], reviewer=data["reviewer"],
                    created_by=self.user, run=data.get("run"), count=data.get("count"),
                    bbox=bbox, synapse_ids=ids)
        except BatchInputError as error:
            self.add_error(fields[error.field], str(error))
        return data

    def save(self, commit=True):
        # The service made the batch and its items while the form was checked.
        self.save_m2m = lambda: None
        return self.batch


@admin.register(ReviewBatch)
class ReviewBatchAdmin(admin.ModelAdmin):
    """Batches of synapses handed to reviewers; their queue serves them first."""

    list_display = ["name", "dataset", "reviewer", "selection", "created_by", "created_at"]
    list_filter = ["dataset", "reviewer"]
    readonly_fields = ["selection", "created_by", "created_at"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is not None:
            return super().get_form(request, obj, change=change, **kwargs)
        kwargs["form"] = type("ReviewBatchAddForm", (ReviewBatchAddForm,), {"user": request.user})
        kwargs["fields"] = ["dataset", "name", "reviewer", "run", "count", "bbox", "synapse_ids"]
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["dataset", "name", "reviewer", "run", "count", "bbox", "synapse_ids"]
        return ["dataset", "name", "reviewer", "selection", "created_by", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["dataset", "selection", "created_by", "created_at"]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
