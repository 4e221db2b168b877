"""Synapse tables in and out: Cnapse, CAVE-style and edge tables."""

import filecmp

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from connectome.cells.models import Cell
from connectome.imports.synapse_tables import export_synapses, import_synapses
from connectome.jobs.models import Job
from connectome.jobs.services import job_run_inline
from connectome.synapses.models import Synapse, SynapseRun
from detection.io.tables import TableFormatError, read_cnapse
from tests.conftest import shared_file
from tests.connectome.factories import CellFactory, DatasetFactory

pytestmark = pytest.mark.django_db

CNAPSE_HEADER = "syn_id,pre,pre_id,post,post_id,x_pos,y_pos,z_pos,size\n"


def _dataset_with_cells(*segment_ids, shape=(10, 100, 100)):
    dataset = DatasetFactory(shape_z=shape[0], shape_y=shape[1], shape_x=shape[2])
    for seg in segment_ids:
        CellFactory(dataset=dataset, segment_id=seg)
    return dataset


def _nothing_written(dataset, cells_before):
    assert not SynapseRun.objects.filter(dataset=dataset).exists()
    assert not Synapse.objects.filter(dataset=dataset).exists()
    assert Cell.objects.filter(dataset=dataset).count() == cells_before


def test_cnapse_table_with_a_polyadic_site_round_trips(tmp_path):
    big = 2**64 - 3
    dataset = _dataset_with_cells(5, 6, big)
    source = tmp_path / "syn.csv"
    source.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40.5,33\n"
                      f"2,5,100,{big},201,80,120,40.5,21\n"
                      "3,6,101,0,202,96,16,200,7\n")
    run = import_synapses(dataset=dataset, source=str(source), run_name="imported")

    polyadic = Synapse.objects.filter(run=run, site_id=100).select_related("post")
    assert sorted(s.post.segment_id for s in polyadic) == [6, big]
    background = Synapse.objects.get(run=run, external_id=3)
    assert background.post is None and background.pre.segment_id == 6
    assert (background.ctr_z, background.ctr_y, background.ctr_x) == (200.0, 16.0, 96.0)

    target = tmp_path / "out.csv"
    assert export_synapses(dataset=dataset, target=str(target), table_format="cnapse") == 3
    assert read_cnapse(target) == read_cnapse(source)


def test_cave_table_in_voxels_is_converted_to_nm(tmp_path):
    dataset = _dataset_with_cells(5, 6)  # 40 x 8 x 8 nm voxels
    source = tmp_path / "cave.csv"
    source.write_text(
        "id,pre_pt_root_id,post_pt_root_id,pre_pt_position,post_pt_position,ctr_pt_position,size\n"
        '7,5,6,"[10 20 3]","[12 20 3]","[11 20 3]",40\n'
    )
    run = import_synapses(dataset=dataset, source=str(source), run_name="cave",
                          position_unit="voxel")
    synapse = run.synapses.get()
    assert (synapse.pre_z, synapse.pre_y, synapse.pre_x) == (120.0, 160.0, 80.0)
    assert synapse.ctr_x == 88.0 and synapse.external_id == 7


@pytest.mark.slow
def test_witvliet_adult_edge_table_round_trips_byte_for_byte(tmp_path):
    source = shared_file("celegans_witvliet2021/witvliet_2020_7_adult.csv")
    dataset = DatasetFactory(name="celegans-adult", voxel_size_z=1, voxel_size_y=1, voxel_size_x=1)
    job = job_run_inline(kind="import_synapses", dataset=dataset, parameters={
        "source": str(source), "run_name": "witvliet 2021 adult", "create_missing_cells": True})
    assert job.state == Job.State.DONE, job.error
    assert job.result["synapses"] == sum(
        int(line.rsplit(",", 1)[1]) for line in source.read_text().splitlines()[1:]
    )
    assert Cell.objects.filter(dataset=dataset).count() == 222
    assert Synapse.objects.filter(dataset=dataset, kind="electrical").exists()

    target = tmp_path / "exported.csv"
    call_command("export_synapses", str(dataset.pk), str(target), "--table-format", "edges")
    assert filecmp.cmp(source, target, shallow=False)


# --- bad input: the message names file, row and field; nothing is written -------------------

def test_malformed_row_names_file_line_and_field(tmp_path):
    dataset = _dataset_with_cells(5, 6)
    source = tmp_path / "bad.csv"
    source.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40,33\n2,5,100,6,201,80,abc,40,3\n")
    with pytest.raises(TableFormatError, match=r"bad\.csv line 3, field 'y_pos': 'abc'"):
        import_synapses(dataset=dataset, source=str(source), run_name="r")
    _nothing_written(dataset, 2)


def test_missing_columns_are_listed(tmp_path):
    dataset = _dataset_with_cells(5)
    source = tmp_path / "cols.csv"
    source.write_text("syn_id,pre,post\n1,5,5\n")
    with pytest.raises(TableFormatError, match=r"cols\.csv.*missing.*x_pos"):
        import_synapses(dataset=dataset, source=str(source), run_name="r", table_format="cnapse")
    _nothing_written(dataset, 1)


def test_unknown_segment_id_names_the_row(tmp_path):
    dataset = _dataset_with_cells(5, 6)
    source = tmp_path / "unknown.csv"
    source.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40,33\n9,5,101,777,201,8,8,8,3\n")
    with pytest.raises(ValueError, match=r"unknown\.csv data row 2 \(syn_id 9\): segment id 777 "
                                         r"is not a cell of dataset"):
        import_synapses(dataset=dataset, source=str(source), run_name="r")
    _nothing_written(dataset, 2)


def test_points_outside_the_dataset_are_refused(tmp_path):
    dataset = _dataset_with_cells(5, 6)  # extent 400 x 800 x 800 nm
    source = tmp_path / "far.csv"
    source.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40,33\n2,5,100,6,201,8000,8,8,3\n")
    with pytest.raises(ValueError, match=r"far\.csv data row 2 \(syn_id 2\): position .* outside"):
        import_synapses(dataset=dataset, source=str(source), run_name="r")
    _nothing_written(dataset, 2)


def test_existing_run_name_is_refused_and_kept(tmp_path):
    dataset = _dataset_with_cells(5, 6)
    source = tmp_path / "syn.csv"
    source.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40,33\n")
    import_synapses(dataset=dataset, source=str(source), run_name="r")
    with pytest.raises(ValueError, match="already has a synapse run named 'r'"):
        import_synapses(dataset=dataset, source=str(source), run_name="r")
    assert Synapse.objects.filter(dataset=dataset).count() == 1


def test_replace_swaps_a_run_atomically(tmp_path):
    dataset = _dataset_with_cells(5, 6)
    first = tmp_path / "a.csv"
    first.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40,33\n")
    second = tmp_path / "b.csv"
    second.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40,33\n2,6,101,5,201,8,8,8,1\n")
    import_synapses(dataset=dataset, source=str(first), run_name="r")
    import_synapses(dataset=dataset, source=str(second), run_name="r", replace=True)
    assert list(Synapse.objects.filter(dataset=dataset).values_list("external_id", flat=True)
                .order_by("external_id")) == [1, 2]
    assert SynapseRun.objects.filter(dataset=dataset).count() == 1


def test_command_reports_the_error(tmp_path):
    dataset = _dataset_with_cells(5)
    source = tmp_path / "bad.csv"
    source.write_text(CNAPSE_HEADER + "1,5,100,5,200,80,120,nan,33\n")
    with pytest.raises(CommandError, match=r"bad\.csv line 2, field 'z_pos'"):
        call_command("import_synapses", str(dataset.pk), str(source), "--run", "r")
    _nothing_written(dataset, 1)
