import json

from django import forms
from django.contrib import admin, messages
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html

from connectome.jobs.models import Job, JobBlock, JobLock
from connectome.jobs.registry import get_job_spec, job_kinds
from connectome.jobs.services import (
    JobParameterError,
    job_cancel,
    job_check_conflicts,
    job_create,
    job_validate_parameters,
)


class JobCreateForm(forms.ModelForm):
    user = None  # who asks: the admin's request user (decides which server paths it may name)
    kind = forms.ChoiceField(choices=())
    parameters = forms.JSONField(
        initial=dict,
        help_text='JSON, e.g. {"source": "/data/em.h5", "name": "em", "dataset_path": "volumes/raw"}',
    )

    class Meta:
        model = Job
        fields = ["kind", "dataset", "parameters"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [
            (kind, f"{kind}: {get_job_spec(kind).description}") for kind in job_kinds()
        ]
        lines = []
        for kind in job_kinds():
            fields = get_job_spec(kind).parameters().fields
            lines.append(f"{kind}: " + ", ".join(
                f"{name}{'' if f.required else '?'}" for name, f in fields.items()
            ))
        self.fields["parameters"].help_text += "<br>" + "<br>".join(lines)

    def clean(self):
        data = super().clean()
        if "kind" in data and "parameters" in data:
            try:
                data["parameters"] = job_validate_parameters(
                    kind=data["kind"], parameters=data["parameters"] or {}, user=self.user,
                )
                job_check_conflicts(kind=data["kind"], parameters=data["parameters"],
                                    dataset=data.get("dataset"))
            except JobParameterError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return data


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "dataset", "state", "progress_bar", "message", "created_by",
                    "created_at", "duration"]
    list_filter = ["state", "kind", "dataset"]
    search_fields = ["kind", "error", "message"]
    actions = ["cancel_jobs", "resume_jobs"]
    readonly_fields = ["kind", "dataset", "parameters_pretty", "state", "progress_bar",
                       "message", "blocks_summary", "result", "error", "traceback",
                       "cancel_requested", "queue", "block_queue", "task_id", "step", "worker",
                       "heartbeat_at", "attempts", "retries", "created_by", "created_at",
                       "started_at", "finished_at"]
    exclude = ["parameters", "progress_done", "progress_total"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = type("JobCreateForm", (JobCreateForm,), {"user": request.user})
            kwargs["fields"] = ["kind", "dataset", "parameters"]
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_exclude(self, request, obj=None):
        return [] if obj is None else self.exclude

    def save_model(self, request, obj, form, change):
        if change:
            return
        job = job_create(
            kind=form.cleaned_data["kind"], parameters=form.cleaned_data["parameters"],
            dataset=form.cleaned_data.get("dataset"), user=request.user,
        )
        obj.pk = job.pk

    def has_change_permission(self, request, obj=None):
        # Jobs are read-only once made; they change through their lifecycle only.
        return request.method == "GET" and super().has_change_permission(request, obj)

    @admin.display(description="progress")
    def progress_bar(self, obj):
        fraction = obj.fraction_done
        if fraction is None:
            return "-"
        return format_html(
            '<progress value="{}" max="{}"></progress> {} / {}',
            obj.progress_done, obj.progress_total, obj.progress_done, obj.progress_total,
        )

    @admin.display(description="parameters")
    def parameters_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.parameters, indent=2))

    @admin.display(description="duration")
    def duration(self, obj):
        seconds = obj.duration_s
        return "-" if seconds is None else f"{seconds:.1f} s"

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        count = 0
        for job in queryset:
            if not job.is_finished:
                job_cancel(job=job)
                count += 1
        self.message_user(request, f"cancel requested for {count} job(s)", messages.SUCCESS)

    @admin.display(description="blocks")
    def blocks_summary(self, obj):
        counts = dict(obj.blocks.values_list("state").annotate(n=Count("id")).values_list(
            "state", "n"))
        if not counts:
            return "-"
        link = reverse("admin:jobs_jobblock_changelist") + f"?job__id__exact={obj.pk}"
        order = ["done", "running", "pending", "failed"]
        text = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
        return format_html('<a href="{}">{}</a>', link, text)

    @admin.action(description="Resume selected jobs (block-wise: the unfinished blocks; "
                              "others: from the start)")
    def resume_jobs(self, request, queryset):
        from connectome.jobs.blocks import job_resume

        for job in queryset:
            try:
                left = job_resume(job=job)
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                done = (f"{left} blocks sent again" if job.blocks.exists()
                        else "sent again to run from the start")
                self.message_user(request, f"job {job.pk}: {done}", messages.SUCCESS)


@admin.register(JobBlock)
class JobBlockAdmin(admin.ModelAdmin):
    list_display = ["job", "index", "box_display", "state", "attempts", "worker", "compute_s",
                    "finished_at", "error"]
    list_filter = ["state", "job__kind"]
    search_fields = ["=job__id", "error"]
    readonly_fields = [f.name for f in JobBlock._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method == "GET" and super().has_change_permission(request, obj)

    @admin.display(description="box (z y x)")
    def box_display(self, obj):
        return obj.describe().split(" ", 2)[2]


@admin.register(JobLock)
class JobLockAdmin(admin.ModelAdmin):
    list_display = ["dataset", "resource", "job", "created_at"]
    list_filter = ["dataset"]
    readonly_fields = ["dataset", "resource", "job", "created_at"]

    def has_add_permission(self, request):
        return False
