from django.urls import path

from connectome.viewer import views

app_name = "viewer"
urlpatterns = [
    # The client finds its token in ".../v/<token>/" and listens at ".../events/<token>".
    path("ng/v/<str:token>/", views.client_file, name="client"),
    path("ng/v/<str:token>/<path:path>", views.client_file, name="client"),
    path("ng/events/<str:token>", views.events, name="events"),
    path("viewer/layers/<int:layer_id>/<path:path>", views.layer_data, name="layer-data"),
    path("viewer/annotations/runs/<int:run_id>/<path:path>", views.run_annotations,
         name="run-annotations"),
    path("viewer/state/datasets/<int:dataset_id>/", views.dataset_state, name="dataset-state"),
    path("viewer/state/synapses/<int:synapse_id>/", views.synapse_state, name="synapse-state"),
    path("viewer/state/cells/<int:cell_id>/", views.cell_state, name="cell-state"),
]
