"""Storing partner-assignment rows as a synapse run."""

import pytest

from connectome.imports.synapse_tables import export_synapses
from connectome.synapses import services
from connectome.synapses.apis import SynapseSerializer
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.services import synapse_run_store
from detection.io.tables import read_cnapse
from tests.connectome.factories import CellFactory, DatasetFactory, PartnerRowFactory

pytestmark = pytest.mark.django_db

BIG = 2**64 - 3


def _dataset_with_cells(*segment_ids):
    dataset = DatasetFactory()
    for seg in segment_ids:
        CellFactory(dataset=dataset, segment_id=seg)
    return dataset


def _rows():
    """A polyadic site (5 -> 6, 5 -> BIG), a background row and a self contact."""
    return [
        PartnerRowFactory(site_id=1, pre_id=5, post_id=6, weight=0.7, contact_area_nm2=1200.0,
                          confidence=0.8, pre_point=(40.0, 80.0, 120.0),
                          post_point=(40.0, 96.0, 120.0), center=(40.0, 88.0, 120.0),
                          size_voxels=12, method="diffusion"),
        PartnerRowFactory(site_id=1, pre_id=5, post_id=BIG, weight=0.3, contact_area_nm2=500.0,
                          confidence=0.6, size_voxels=12, method="diffusion"),
        PartnerRowFactory(site_id=2, pre_id=6, post_id=0, confidence=0.4, method="diffusion"),
        PartnerRowFactory(site_id=3, pre_id=5, post_id=5, confidence=0.9, method="diffusion"),
    ]


def _site_posts(run):
    return sorted(
        (s.site_id, s.pre.segment_id if s.pre else 0, s.post.segment_id if s.post else 0)
        for s in run.synapses.select_related("pre", "post")
    )


def test_rows_are_stored_with_cells_points_numbers_and_flags():
    dataset = _dataset_with_cells(5, 6, BIG)
    run = synapse_run_store(dataset=dataset, run_name="diffusion", method="partners:diffusion",
                            rows=iter(_rows()), parameters={"steps": 40}, source_path="pred.zarr")

    assert (run.name, run.method, run.parameters, run.source_path) == (
        "diffusion", "partners:diffusion", {"steps": 40}, "pred.zarr")
    assert _site_posts(run) == [(1, 5, 6), (1, 5, BIG), (2, 6, 0), (3, 5, 5)]

    first = run.synapses.get(site_id=1, post__segment_id=6)
    assert (first.pre_z, first.pre_y, first.pre_x) == (40.0, 80.0, 120.0)
    assert (first.post_z, first.post_y, first.post_x) == (40.0, 96.0, 120.0)
    assert (first.ctr_z, first.ctr_y, first.ctr_x) == (40.0, 88.0, 120.0)
    assert (first.size_voxels, first.size_nm3) == (12.0, 12 * 40.0 * 8.0 * 8.0)
    assert (first.contact_area_nm2, first.confidence, first.weight) == (1200.0, 0.8, 0.7)
    assert (first.flag, first.method, first.dataset_id) == ("", "diffusion", dataset.pk)

    flags = dict(run.synapses.values_list("site_id", "flag").filter(site_id__gt=1))
    assert flags == {2: Synapse.Flag.BACKGROUND, 3: Synapse.Flag.SELF_CONTACT}
    assert run.synapses.get(site_id=2).post is None


def test_rows_go_in_batches(monkeypatch):
    dataset = _dataset_with_cells(1, 2)
    calls = []
    bulk_create = Synapse.objects.bulk_create
    monkeypatch.setattr(services, "BATCH", 2)
    monkeypatch.setattr(Synapse.objects, "bulk_create",
                        lambda objs: calls.append(len(objs)) or bulk_create(objs))
    run = synapse_run_store(dataset=dataset, run_name="r", method="contact",
                            rows=PartnerRowFactory.build_batch(5))
    assert calls == [2, 2, 1]
    assert run.synapses.count() == 5


def test_unknown_segment_id_names_the_site_and_writes_nothing():
    dataset = _dataset_with_cells(5, 6)
    rows = [PartnerRowFactory(site_id=1, pre_id=5, post_id=6),
            PartnerRowFactory(site_id=9, pre_id=5, post_id=777),
            PartnerRowFactory(site_id=10, pre_id=778, post_id=6)]
    with pytest.raises(ValueError, match=r"site 9: segment id 777 is not a cell of dataset "
                                         rf"'{dataset.name}' \(and 1 more unknown ids\)"):
        synapse_run_store(dataset=dataset, run_name="r", method="contact", rows=rows)
    assert not SynapseRun.objects.filter(dataset=dataset).exists()
    assert not Synapse.objects.filter(dataset=dataset).exists()


def test_segment_ids_of_another_dataset_are_unknown():
    dataset = _dataset_with_cells(5)
    _dataset_with_cells(6)
    with pytest.raises(ValueError, match="site 4: segment id 6 is not a cell"):
        synapse_run_store(dataset=dataset, run_name="r", method="contact",
                          rows=[PartnerRowFactory(site_id=4, pre_id=5, post_id=6)])


def test_unknown_flag_is_refused():
    dataset = _dataset_with_cells(1, 2)
    with pytest.raises(ValueError, match=r"site 3: unknown flag 'split'"):
        synapse_run_store(dataset=dataset, run_name="r", method="contact",
                          rows=[PartnerRowFactory(site_id=3, flag="split")])
    assert not SynapseRun.objects.filter(dataset=dataset).exists()


def test_existing_run_name_is_refused_and_kept():
    dataset = _dataset_with_cells(5, 6, BIG)
    synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows())
    with pytest.raises(ValueError, match=rf"dataset '{dataset.name}' already has a synapse run "
                                         r"named 'r'; choose another name or replace it"):
        synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows()[:1])
    assert Synapse.objects.filter(dataset=dataset).count() == 4


def test_replace_swaps_the_run_and_its_synapses():
    dataset = _dataset_with_cells(5, 6, BIG)
    old = synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows())
    new = synapse_run_store(dataset=dataset, run_name="r", method="contact", replace=True,
                            rows=[PartnerRowFactory(site_id=7, pre_id=6, post_id=5)])
    assert not SynapseRun.objects.filter(pk=old.pk).exists()
    assert list(SynapseRun.objects.filter(dataset=dataset)) == [new]
    assert _site_posts(new) == [(7, 6, 5)]
    assert Synapse.objects.filter(dataset=dataset).count() == 1


def test_replace_that_fails_midway_keeps_the_old_run(monkeypatch):
    dataset = _dataset_with_cells(5, 6, BIG)
    old = synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows())
    bulk_create = Synapse.objects.bulk_create
    calls = []

    def fail_on_second_batch(objs):
        calls.append(len(objs))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return bulk_create(objs)

    monkeypatch.setattr(services, "BATCH", 1)
    monkeypatch.setattr(Synapse.objects, "bulk_create", fail_on_second_batch)
    with pytest.raises(RuntimeError, match="disk full"):
        synapse_run_store(dataset=dataset, run_name="r", method="contact", replace=True,
                          rows=PartnerRowFactory.build_batch(3, pre_id=6, post_id=5))
    assert calls == [1, 1]  # the first batch was written, then undone
    assert list(SynapseRun.objects.filter(dataset=dataset)) == [old]
    assert _site_posts(old) == [(1, 5, 6), (1, 5, BIG), (2, 6, 0), (3, 5, 5)]
    assert Synapse.objects.filter(dataset=dataset).count() == 4


def test_unknown_id_on_replace_keeps_the_old_run():
    dataset = _dataset_with_cells(5, 6, BIG)
    old = synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows())
    with pytest.raises(ValueError, match="site 8: segment id 99 is not a cell"):
        synapse_run_store(dataset=dataset, run_name="r", method="contact", replace=True,
                          rows=[PartnerRowFactory(site_id=8, pre_id=99, post_id=5)])
    assert list(SynapseRun.objects.filter(dataset=dataset)) == [old]
    assert old.synapses.count() == 4


def test_flagged_rows_are_exported_in_the_cnapse_table(tmp_path):
    dataset = _dataset_with_cells(5, 6, BIG)
    synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows())
    target = tmp_path / "out.csv"
    assert export_synapses(dataset=dataset, target=str(target), table_format="cnapse") == 4
    exported = sorted((r.pre_id, r.pre, r.post) for r in read_cnapse(target))
    assert exported == [(1, 5, 6), (1, 5, BIG), (2, 6, 0), (3, 5, 5)]


def test_serializer_shows_weight_and_flag():
    dataset = _dataset_with_cells(5, 6, BIG)
    run = synapse_run_store(dataset=dataset, run_name="r", method="diffusion", rows=_rows())
    data = SynapseSerializer(run.synapses.get(site_id=3)).data
    assert (data["weight"], data["flag"], data["confidence"]) == (1.0, "self_contact", 0.9)
