from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)
from rest_framework.routers import DefaultRouter

from connectome.cells.apis import CellViewSet, LayerErrorsView, SkeletonViewSet
from connectome.common.security import csp_update
from connectome.datasets.apis import DatasetViewSet, LayerViewSet
from connectome.detectors.apis import DetectorModelViewSet
from connectome.jobs.apis import JobDownloadView, JobViewSet
from connectome.review.apis import (
    ReviewBatchViewSet,
    ReviewNextView,
    ReviewSkipView,
    ReviewSummaryView,
    ReviewUndoView,
    ReviewViewSet,
)
from connectome.search.apis import SearchView
from connectome.synapses.apis import (
    CellTypeSummaryView,
    SynapseRunViewSet,
    SynapseTableView,
    SynapseViewSet,
    WiringMatrixView,
)

router = DefaultRouter()
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("layers", LayerViewSet, basename="layer")
router.register("cells", CellViewSet, basename="cell")
router.register("skeletons", SkeletonViewSet, basename="skeleton")
router.register("synapse-runs", SynapseRunViewSet, basename="synapserun")
router.register("synapses", SynapseViewSet, basename="synapse")
router.register("reviews", ReviewViewSet, basename="review")
router.register("review-batches", ReviewBatchViewSet, basename="reviewbatch")
router.register("jobs", JobViewSet, basename="job")
router.register("detectors", DetectorModelViewSet, basename="detector")

admin.site.site_header = "Connectome administration"
admin.site.site_title = "Connectome"

api = [
    path("datasets/<int:pk>/wiring/", WiringMatrixView.as_view(), name="dataset-wiring"),
    path("datasets/<int:pk>/cell-types/", CellTypeSummaryView.as_view(),
         name="dataset-cell-types"),
    path("datasets/<int:pk>/synapse-table/", SynapseTableView.as_view(),
         name="dataset-synapse-table"),
    path("datasets/<int:pk>/review/next/", ReviewNextView.as_view(), name="dataset-review-next"),
    path("datasets/<int:pk>/review/skip/", ReviewSkipView.as_view(), name="dataset-review-skip"),
    path("datasets/<int:pk>/review/undo/", ReviewUndoView.as_view(), name="dataset-review-undo"),
    path("datasets/<int:pk>/review/summary/", ReviewSummaryView.as_view(),
         name="dataset-review-summary"),
    path("datasets/<int:pk>/layers/<int:layer_id>/errors/", LayerErrorsView.as_view(),
         name="layer-errors"),
    path("search/", SearchView.as_view(), name="search"),
    path("jobs/<int:pk>/download/", JobDownloadView.as_view(), name="job-download"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Redoc writes its styles into <style> elements as it runs.
    path("redoc/", csp_update(style_src=["'unsafe-inline'"])(
        SpectacularRedocView.as_view(url_name="schema")), name="redoc"),
    path("", include(router.urls)),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(api)),
    path("api-auth/", include("rest_framework.urls")),
    path("", include("connectome.viewer.urls")),
    path("", include("connectome.web.urls")),
]
