"""Property-based checks of the whole API against its own OpenAPI schema (schemathesis).

Generated requests (valid and invalid query strings, bodies and path ids) go to every
operation as a dataset admin with data present; no response may be a server error. The run
is bounded (a few examples per operation) so the suite stays quick; raise ``MAX_EXAMPLES``
locally to search harder.
"""

import pytest
import schemathesis
from django.contrib.auth.models import Permission
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from connectome.datasets.models import Membership
from connectome.jobs.services import job_create
from connectome.review.models import Review
from connectome.wsgi import application
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    UserFactory,
)

MAX_EXAMPLES = 8


@pytest.fixture
def api_schema(db, data_root, django_capture_on_commit_callbacks):
    dataset = DatasetFactory(is_public=True)
    synapse = SynapseFactory(run__dataset=dataset, confidence=0.5, contact_area_nm2=10.0)
    CellFactory(dataset=dataset, cell_type="KC")
    Review.objects.create(synapse=synapse, verdict="confirmed")
    job_create(kind="selftest", parameters={}, dataset=dataset, enqueue=False)
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    user.user_permissions.add(Permission.objects.get(codename="add_dataset"))
    token = Token.objects.create(user=user)
    # As Django's test client does: requests must not close the test's database connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
        schema.headers = {"Authorization": f"Token {token.key}"}
        yield schema
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.mark.django_db
def test_no_server_errors(api_schema):
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck))
            def call(case):
                case.call_and_validate(headers=api_schema.headers, checks=[not_a_server_error])

            try:
                call()
            except Exception as exc:  # noqa: BLE001 - every operation is tried, all failures shown
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
