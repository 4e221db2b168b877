from django.contrib import admin
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from connectome.cells.apis import CellViewSet
from connectome.datasets.apis import DatasetViewSet, LayerViewSet
from connectome.jobs.apis import JobViewSet
from connectome.synapses.apis import SynapseRunViewSet, SynapseViewSet

router = DefaultRouter()
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("layers", LayerViewSet, basename="layer")
router.register("cells", CellViewSet, basename="cell")
router.register("synapse-runs", SynapseRunViewSet, basename="synapserun")
router.register("synapses", SynapseViewSet, basename="synapse")
router.register("jobs", JobViewSet, basename="job")

admin.site.site_header = "Connectome administration"
admin.site.site_title = "Connectome"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
    path("", include("connectome.web.urls")),
]
