import factory
from django.contrib.auth import get_user_model

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Membership
from connectome.synapses.models import Synapse, SynapseRun
from detection.partners.records import PartnerRow, partner_flag


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


class PartnerRowFactory(factory.Factory):
    """A monadic partner-assignment row from segment 1 to segment 2, flagged as its ids say."""

    class Meta:
        model = PartnerRow

    site_id = factory.Sequence(lambda n: n + 1)
    pre_id = 1
    post_id = 2
    pre_point = (400.0, 800.0, 760.0)
    post_point = (400.0, 800.0, 840.0)
    center = (400.0, 800.0, 800.0)
    size_voxels = 30
    size_nm3 = factory.LazyAttribute(lambda row: row.size_voxels * 40.0 * 8.0 * 8.0)
    contact_area_nm2 = 5000.0
    confidence = 0.9
    weight = 1.0
    flag = factory.LazyAttribute(lambda row: partner_flag(row.pre_id, row.post_id))
    method = "contact"
