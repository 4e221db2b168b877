from django.urls import path

from connectome.search.views import search_page
from connectome.web import views

app_name = "web"
urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("search/", search_page, name="search"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset"),
    path("datasets/<int:pk>/review/", views.review_queue, name="review"),
    path("datasets/<int:pk>/wiring/", views.wiring, name="wiring"),
    path("datasets/<int:pk>/cells/", views.cell_list, name="cells"),
    path("datasets/<int:pk>/cells/<int:cell_id>/", views.cell_detail, name="cell"),
    path("datasets/<int:pk>/synapses/<int:synapse_id>/", views.synapse_detail, name="synapse"),
]
