import factory
from django.contrib.auth import get_user_model

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Membership
from connectome.synapses.models import Synapse, SynapseRun


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw")


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    name = factory.Sequence(lambda n: f"dataset-{n}")
    voxel_size_z = 40.0
    voxel_size_y = 8.0
    voxel_size_x = 8.0


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    dataset = factory.SubFactory(DatasetFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.VIEWER


class CellFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Cell

    dataset = factory.SubFactory(DatasetFactory)
    segment_id = factory.Sequence(lambda n: n + 1)


class SynapseRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SynapseRun

    dataset = factory.SubFactory(DatasetFactory)
    name = factory.Sequence(lambda n: f"run-{n}")
    method = "test"


class SynapseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Synapse

    run = factory.SubFactory(SynapseRunFactory)
    dataset = factory.SelfAttribute("run.dataset")
    pre = factory.SubFactory(CellFactory, dataset=factory.SelfAttribute("..dataset"))
    post = factory.SubFactory(CellFactory, dataset=factory.SelfAttribute("..dataset"))
    ctr_z = 400.0
    ctr_y = 800.0
    ctr_x = 800.0
