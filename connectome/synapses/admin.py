from django.contrib import admin

from connectome.synapses.models import Synapse, SynapseRun


@admin.register(SynapseRun)
class SynapseRunAdmin(admin.ModelAdmin):
    list_display = ["name", "dataset", "method", "n_synapses", "job", "created_at"]
    list_filter = ["dataset", "method"]
    search_fields = ["name"]
    readonly_fields = ["job", "created_at"]

    @admin.display(description="synapses")
    def n_synapses(self, obj):
        return obj.synapses.count()


@admin.register(Synapse)
class SynapseAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "run", "kind", "pre", "post", "site_id", "confidence",
                    "weight", "contact_area_nm2", "flag", "review_state"]
    list_filter = ["dataset", "kind", "flag", "review_state", "run"]
    raw_id_fields = ["pre", "post"]
    list_select_related = ["dataset", "run", "pre", "post"]
    readonly_fields = ["run", "method"]
    show_full_result_count = False
