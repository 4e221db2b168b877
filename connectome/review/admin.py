from django.contrib import admin

from connectome.review.models import Review, ReviewClaim, ReviewSkip


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["synapse", "verdict", "reviewer", "order", "created_at"]
    list_filter = ["verdict", "order", "reviewer", "synapse__dataset"]
    raw_id_fields = ["synapse", "corrected_pre", "corrected_post"]
    search_fields = ["note"]


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
