from django.contrib import admin

from connectome.review.models import Review


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["synapse", "verdict", "reviewer", "created_at"]
    list_filter = ["verdict", "reviewer", "synapse__dataset"]
    raw_id_fields = ["synapse", "corrected_pre", "corrected_post"]
    search_fields = ["note"]
