from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render

from connectome.datasets.selectors import datasets_visible_to
from connectome.jobs.models import Job


def home(request):
    datasets = datasets_visible_to(request.user).prefetch_related("layers")
    jobs = Job.objects.filter(dataset__in=datasets).select_related("dataset")[:20]
    return render(request, "web/home.html", {"datasets": datasets, "jobs": jobs})


def healthz(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok", "database": connection.vendor})
