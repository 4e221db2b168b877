"""The wiring matrix: what is counted, the thresholds, the grouping, the exports, the command."""

import csv
from io import StringIO

import networkx as nx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connectome.cells.models import Cell
from connectome.review.services import review_create
from connectome.synapses.exports import export_wiring_csv, export_wiring_graphml
from connectome.synapses.models import Synapse
from connectome.synapses.wiring import wiring_matrix
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

BIG = 2**64 - 5


@pytest.fixture
def net():
    """Four cells (A, C excitatory, B inhibitory, D without a type) and two runs.

    Counted in run "detect": A->B three times (one of them a partner of the polyadic site 1,
    whose other partner is C), A->C, B->A, C->D, C->A (confirmed). Not counted: a self contact,
    a background row, an unassigned row, an unflagged B->B and a rejected A->B.
    """
    dataset = DatasetFactory(name="net")
    a = CellFactory(dataset=dataset, segment_id=10, name="A", cell_type="exc")
    b = CellFactory(dataset=dataset, segment_id=20, name="B", cell_type="inh")
    c = CellFactory(dataset=dataset, segment_id=30, name="C", cell_type="exc")
    d = CellFactory(dataset=dataset, segment_id=BIG, name="D", cell_type="")
    detect = SynapseRunFactory(dataset=dataset, name="detect")
    truth = SynapseRunFactory(dataset=dataset, name="truth")

    def synapse(pre, post, confidence=None, area=None, weight=None, run=detect, **kw):
        return SynapseFactory(run=run, pre=pre, post=post, confidence=confidence,
                              contact_area_nm2=area, weight=weight, **kw)

    synapse(a, b, 0.9, 100.0, 0.6, site_id=1)
    synapse(a, c, 0.5, 50.0, 0.4, site_id=1)
    synapse(a, b, 0.7, 200.0, 1.0, site_id=2)
    synapse(a, b, 0.3, 10.0, 1.0, site_id=3)
    synapse(b, a, 0.8, 30.0, 1.0)
    synapse(c, d, 0.95, 70.0, None)
    synapse(c, a, 0.6, 5.0, 1.0, review_state=Synapse.ReviewState.CONFIRMED)
    synapse(a, a, 0.99, 400.0, 1.0, flag=Synapse.Flag.SELF_CONTACT)
    synapse(a, None, 0.99, 400.0, 1.0, flag=Synapse.Flag.BACKGROUND)
    synapse(None, b, 0.99, 400.0, 1.0)
    synapse(b, b, 0.99, 400.0, 1.0)
    synapse(a, b, 0.99, 1000.0, 1.0, review_state=Synapse.ReviewState.NOT_SYNAPSE)
    synapse(a, b, run=truth)  # an imported table: no confidence, area or weight
    other = SynapseRunFactory()  # another dataset
    SynapseFactory(run=other, pre=CellFactory(dataset=other.dataset, segment_id=10),
                   post=CellFactory(dataset=other.dataset, segment_id=20))
    return dataset, detect, truth, (a, b, c, d)


def _by_segments(matrix):
    return {(p.pre_segment_id, p.post_segment_id): p for p in matrix.pairs}


def _numbers(pair):
    return (pair.synapses, pair.contact_area_nm2, pair.weight, pair.mean_confidence)


def test_counts_sums_and_means_per_cell_pair(net):
    dataset, detect, _, (a, b, c, d) = net
    matrix = wiring_matrix(dataset=dataset, runs=[detect])
    assert [(p.pre_segment_id, p.post_segment_id) for p in matrix.pairs] == [
        (10, 20), (10, 30), (20, 10), (30, 10), (30, BIG)]
    pairs = _by_segments(matrix)
    assert _numbers(pairs[10, 20]) == (3, 310.0, pytest.approx(2.6), pytest.approx(1.9 / 3))
    assert _numbers(pairs[10, 30]) == (1, 50.0, 0.4, 0.5)
    assert _numbers(pairs[20, 10]) == (1, 30.0, 1.0, 0.8)
    assert _numbers(pairs[30, 10]) == (1, 5.0, 1.0, 0.6)
    assert _numbers(pairs[30, BIG]) == (1, 70.0, None, 0.95)
    assert matrix.synapses == 7 and len(matrix) == 5
    edge = pairs[30, BIG]
    assert (edge.pre_name, edge.post_name, edge.pre_type, edge.post_type) == ("C", "D", "exc", "")
    assert (edge.pre_cell_id, edge.post_cell_id) == (c.pk, d.pk)


def test_all_runs_by_default(net):
    dataset, *_ = net
    pairs = _by_segments(wiring_matrix(dataset=dataset))
    # The imported A->B adds a synapse but no area, weight or confidence.
    assert _numbers(pairs[10, 20]) == (4, 310.0, pytest.approx(2.6), pytest.approx(1.9 / 3))
    assert sum(p.synapses for p in pairs.values()) == 8


def test_run_selection(net):
    dataset, _, truth, _ = net
    matrix = wiring_matrix(dataset=dataset, runs=[truth])
    assert [_numbers(p) for p in matrix.pairs] == [(1, None, None, None)]


def test_min_confidence_filters_synapses_before_counting(net):
    dataset, detect, *_ = net
    pairs = _by_segments(wiring_matrix(dataset=dataset, runs=[detect], min_confidence=0.6))
    assert sorted(pairs) == [(10, 20), (20, 10), (30, 10), (30, BIG)]
    assert _numbers(pairs[10, 20]) == (2, 300.0, pytest.approx(1.6), pytest.approx(0.8))
    # Synapses without a confidence do not pass a threshold.
    assert wiring_matrix(dataset=dataset, runs=[net[2]], min_confidence=0.0).pairs == []


def test_min_count_drops_weak_pairs_after_counting(net):
    dataset, detect, *_ = net
    matrix = wiring_matrix(dataset=dataset, runs=[detect], min_count=2)
    assert [(p.pre_segment_id, p.post_segment_id, p.synapses) for p in matrix.pairs] == [
        (10, 20, 3)]
    both = wiring_matrix(dataset=dataset, runs=[detect], min_confidence=0.6, min_count=2)
    assert [_numbers(p)[:2] for p in both.pairs] == [(2, 300.0)]
    assert wiring_matrix(dataset=dataset, runs=[detect], min_confidence=0.75,
                         min_count=2).pairs == []


def test_cell_type_pairs(net):
    dataset, detect, *_ = net
    matrix = wiring_matrix(dataset=dataset, runs=[detect], group_by="cell_type")
    assert [(p.pre_type, p.post_type) for p in matrix.pairs] == [
        ("exc", ""), ("exc", "exc"), ("exc", "inh"), ("inh", "exc")]
    pairs = {(p.pre_type, p.post_type): p for p in matrix.pairs}
    assert _numbers(pairs["exc", "exc"]) == (2, 55.0, pytest.approx(1.4), pytest.approx(0.55))
    assert _numbers(pairs["exc", "inh"]) == (3, 310.0, pytest.approx(2.6), pytest.approx(1.9 / 3))
    assert _numbers(pairs["exc", ""]) == (1, 70.0, None, 0.95)
    assert pairs["exc", "inh"].pre_segment_id is None and pairs["exc", "inh"].pre_name == ""
    assert matrix.synapses == 7


def test_restricted_to_cells(net):
    dataset, detect, _, (a, b, c, d) = net
    matrix = wiring_matrix(dataset=dataset, runs=[detect], cells=[a.pk, b.pk])
    assert sorted(_by_segments(matrix)) == [(10, 20), (20, 10)]
    typed = Cell.objects.filter(dataset=dataset, cell_type="exc")
    matrix = wiring_matrix(dataset=dataset, runs=[detect], cells=typed)
    assert sorted(_by_segments(matrix)) == [(10, 30), (30, 10)]


@pytest.mark.parametrize("group_by, synapses", [("cell", 0), ("cell_type", 2)])
def test_the_matrix_is_one_group_by_query(net, group_by, synapses):
    dataset, detect, _, (a, b, c, d) = net
    typed = Cell.objects.filter(dataset=dataset, cell_type="exc")
    with CaptureQueriesContext(connection) as queries:
        matrix = wiring_matrix(dataset=dataset, runs=[detect], min_confidence=0.1, min_count=2,
                               cells=typed, group_by=group_by)
    assert len(queries.captured_queries) == 1
    sql = queries.captured_queries[0]["sql"].upper()
    assert "GROUP BY" in sql and "HAVING" in sql
    # A->C and C->A are one synapse each, but both are excitatory onto excitatory.
    assert matrix.synapses == synapses


def _detected(dataset, detect, pre, post, confidence):
    return Synapse.objects.get(dataset=dataset, run=detect, pre=pre, post=post,
                               confidence=confidence)


def test_verdicts_turn_drop_or_keep_synapses(net):
    dataset, detect, _, (a, b, c, d) = net
    reviewer = UserFactory()
    turned = _detected(dataset, detect, a, b, 0.3)  # area 10, weight 1
    review_create(synapse=turned, reviewer=reviewer, verdict=Synapse.ReviewState.WRONG_DIRECTION)
    moved = _detected(dataset, detect, a, c, 0.5)  # the polyadic site's partner C
    review_create(synapse=moved, reviewer=reviewer, verdict=Synapse.ReviewState.WRONG_PARTNER,
                  corrected_post=[d])
    review_create(synapse=_detected(dataset, detect, c, d, 0.95), reviewer=reviewer,
                  verdict=Synapse.ReviewState.UNSURE)
    pairs = _by_segments(wiring_matrix(dataset=dataset, runs=[detect]))
    # A->B lost the turned synapse to B->A; A->C is gone (wrong partner); C->D stays.
    assert sorted(pairs) == [(10, 20), (20, 10), (30, 10), (30, BIG)]
    assert _numbers(pairs[10, 20]) == (2, 300.0, pytest.approx(1.6), pytest.approx(0.8))
    assert _numbers(pairs[20, 10]) == (2, 40.0, 2.0, pytest.approx(0.55))
    turned_pair = pairs[20, 10]
    assert (turned_pair.pre_cell_id, turned_pair.post_cell_id) == (b.pk, a.pk)
    assert (turned_pair.pre_name, turned_pair.post_name) == ("B", "A")
    assert (turned_pair.pre_type, turned_pair.post_type) == ("inh", "exc")
    assert _numbers(pairs[30, BIG]) == (1, 70.0, None, 0.95)
    types = {(p.pre_type, p.post_type): p.synapses
             for p in wiring_matrix(dataset=dataset, runs=[detect], group_by="cell_type").pairs}
    assert types == {("exc", "inh"): 2, ("inh", "exc"): 2, ("exc", "exc"): 1, ("exc", ""): 1}
    # A later verdict wins: confirmed again, the synapse counts as detected.
    review_create(synapse=turned, reviewer=reviewer, verdict=Synapse.ReviewState.CONFIRMED)
    review_create(synapse=moved, reviewer=reviewer, verdict=Synapse.ReviewState.CONFIRMED)
    assert wiring_matrix(dataset=dataset, runs=[detect]).synapses == 7


def test_a_turned_synapse_keeps_the_matrix_one_query(net):
    dataset, detect, _, (a, b, c, d) = net
    review_create(synapse=_detected(dataset, detect, a, b, 0.3), reviewer=None,
                  verdict=Synapse.ReviewState.WRONG_DIRECTION)
    with CaptureQueriesContext(connection) as queries:
        matrix = wiring_matrix(dataset=dataset, runs=[detect], cells=[a.pk, b.pk], min_count=2)
    assert len(queries.captured_queries) == 1
    assert [(p.pre_segment_id, p.post_segment_id, p.synapses) for p in matrix.pairs] == [
        (10, 20, 2), (20, 10, 2)]


def test_bad_arguments_are_refused(net):
    dataset, *_ = net
    with pytest.raises(ValueError, match="unknown grouping 'layer'; groupings: cell, cell_type"):
        wiring_matrix(dataset=dataset, group_by="layer")
    with pytest.raises(ValueError, match="min_count must be at least 1; got 0"):
        wiring_matrix(dataset=dataset, min_count=0)


# --- exports ----------------------------------------------------------------------------------

def _read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_csv_per_cell_pair(net, tmp_path):
    dataset, detect, *_ = net
    target = tmp_path / "wiring.csv"
    assert export_wiring_csv(wiring_matrix(dataset=dataset, runs=[detect]), target) == 5
    assert target.read_text().splitlines()[0] == (
        "pre_segment_id,post_segment_id,pre_name,post_name,pre_type,post_type,synapses,"
        "contact_area_nm2,weight,mean_confidence,kind")
    rows = _read_csv(target)
    assert [(r["pre_segment_id"], r["post_segment_id"], r["synapses"]) for r in rows] == [
        ("10", "20", "3"), ("10", "30", "1"), ("20", "10", "1"), ("30", "10", "1"),
        ("30", str(BIG), "1")]
    first, last = rows[0], rows[-1]
    assert (first["pre_name"], first["post_name"], first["pre_type"], first["post_type"]) == (
        "A", "B", "exc", "inh")
    assert float(first["contact_area_nm2"]) == 310.0
    assert float(first["weight"]) == pytest.approx(2.6)
    assert float(first["mean_confidence"]) == pytest.approx(1.9 / 3)
    assert (last["post_type"], last["weight"], last["mean_confidence"]) == ("", "", "0.95")


def test_csv_per_cell_type_pair(net, tmp_path):
    dataset, detect, *_ = net
    target = tmp_path / "types.csv"
    matrix = wiring_matrix(dataset=dataset, runs=[detect], group_by="cell_type")
    assert export_wiring_csv(matrix, target) == 4
    lines = target.read_text().splitlines()
    assert lines[0] == ("pre_type,post_type,synapses,contact_area_nm2,weight,mean_confidence,"
                        "kind")
    assert lines[1] == "exc,,1,70.0,,0.95,chemical"
    assert [line.split(",")[:4] for line in lines[2:]] == [
        ["exc", "exc", "2", "55.0"], ["exc", "inh", "3", "310.0"], ["inh", "exc", "1", "30.0"]]


def test_graphml_reads_back_with_uint64_ids_as_strings(net, tmp_path):
    dataset, detect, *_ = net
    target = tmp_path / "wiring.graphml"
    export_wiring_graphml(wiring_matrix(dataset=dataset, runs=[detect]), target)
    graph = nx.read_graphml(target)
    assert isinstance(graph, nx.DiGraph)
    assert sorted(graph.nodes) == sorted(["10", "20", "30", str(BIG)])
    assert graph.nodes[str(BIG)] == {"segment_id": str(BIG), "name": "D", "cell_type": ""}
    assert graph.nodes["20"] == {"segment_id": "20", "name": "B", "cell_type": "inh"}
    assert graph.number_of_edges() == 5
    edge = graph.edges["10", "20"]
    assert edge["synapses"] == 3 and edge["contact_area_nm2"] == 310.0
    assert edge["weight"] == pytest.approx(2.6)
    assert edge["mean_confidence"] == pytest.approx(1.9 / 3)
    assert graph.edges["30", str(BIG)] == {"kind": "chemical", "synapses": 1,
                                           "contact_area_nm2": 70.0, "mean_confidence": 0.95}


def test_graphml_per_cell_type(net, tmp_path):
    dataset, detect, *_ = net
    target = tmp_path / "types.graphml"
    matrix = wiring_matrix(dataset=dataset, runs=[detect], group_by="cell_type")
    export_wiring_graphml(matrix, target)
    graph = nx.read_graphml(target)
    assert sorted(graph.nodes) == ["(no type)", "exc", "inh"]
    assert graph.nodes["exc"]["cell_type"] == "exc"
    assert graph.edges["exc", "exc"]["synapses"] == 2  # a loop: excitatory onto excitatory
    assert graph.edges["exc", "(no type)"]["synapses"] == 1


# --- the command ------------------------------------------------------------------------------

def test_command_prints_a_summary_and_writes_both_files(net, tmp_path):
    dataset, *_ = net
    out = StringIO()
    call_command("wiring_matrix", "net", "--run", "detect", "--min-confidence", "0.6",
                 "--csv", str(tmp_path / "w.csv"), "--graphml", str(tmp_path / "w.graphml"),
                 stdout=out)
    assert out.getvalue().splitlines() == [
        "wiring matrix of dataset 'net' by cell (detect): 4 pairs, 5 synapses",
        f"wrote 4 rows to {tmp_path / 'w.csv'}",
        f"wrote 4 nodes and 4 edges to {tmp_path / 'w.graphml'}",
    ]
    assert len(_read_csv(tmp_path / "w.csv")) == 4
    assert nx.read_graphml(tmp_path / "w.graphml").number_of_edges() == 4


def test_command_by_cell_type_shows_the_strongest_pairs(net):
    dataset, *_ = net
    out = StringIO()
    call_command("wiring_matrix", str(dataset.pk), "--run", "detect", "truth", "--by",
                 "cell_type", "--min-count", "2", stdout=out)
    assert out.getvalue().splitlines() == [
        "wiring matrix of dataset 'net' by cell_type (detect, truth): 2 pairs, 6 synapses",
        "  exc -> inh: 4",
        "  exc -> exc: 2",
    ]


def test_command_counts_the_default_run_unless_told(net):
    dataset, detect, truth, (a, b, *_) = net
    out = StringIO()
    call_command("wiring_matrix", "net", stdout=out)  # truth is the newest run: the default
    assert out.getvalue().splitlines()[0] == (
        "wiring matrix of dataset 'net' by cell (truth): 1 pairs, 1 synapses")
    out = StringIO()
    call_command("wiring_matrix", "net", "--run", "all", stdout=out)
    assert out.getvalue().splitlines()[0] == (
        "wiring matrix of dataset 'net' by cell (all runs): 5 pairs, 8 synapses")
    SynapseFactory(run=detect, pre=a, post=b, kind=Synapse.Kind.ELECTRICAL)
    SynapseFactory(run=detect, pre=b, post=a, kind=Synapse.Kind.ELECTRICAL)
    out = StringIO()
    call_command("wiring_matrix", "net", "--run", "detect", "--kind", "electrical", stdout=out)
    assert out.getvalue().splitlines() == [
        "wiring matrix of dataset 'net' by cell (detect): 1 electrical pairs, 2 synapses",
        "  A <-> B: 2"]


def test_command_refuses_unknown_dataset_and_run(net):
    with pytest.raises(CommandError, match="no dataset with id or name 'nowhere'"):
        call_command("wiring_matrix", "nowhere")
    with pytest.raises(CommandError, match=r"dataset 'net' has no synapse run named 'nope' "
                                           r"\(runs: .*detect"):
        call_command("wiring_matrix", "net", "--run", "detect", "--run", "nope")
    with pytest.raises(CommandError, match="--min-count must be at least 1"):
        call_command("wiring_matrix", "net", "--min-count", "0")


def test_partners_agree_with_the_matrix():
    """A cell's partners (their own SQL) count exactly what the matrix counts, under every
    verdict, flag, missing partner, run, kind and confidence threshold."""
    import random

    from connectome.synapses.connectivity import cell_partners

    rng = random.Random(4)
    dataset = DatasetFactory()
    runs = [SynapseRunFactory(dataset=dataset) for _ in range(2)]
    cells = [CellFactory(dataset=dataset, segment_id=BIG - i if i % 3 == 0 else 10 + i)
             for i in range(6)]
    states = [value for value, _ in Synapse.ReviewState.choices]
    flags = [value for value, _ in Synapse.Flag.choices]
    for _ in range(300):
        SynapseFactory(
            run=rng.choice(runs), pre=rng.choice(cells + [None]), post=rng.choice(cells),
            review_state=rng.choice(states), flag=rng.choice(flags + [""] * 4),
            confidence=rng.choice([None, rng.random()]),
            contact_area_nm2=rng.choice([None, rng.uniform(100, 1000)]),
            weight=rng.choice([None, rng.random()]),
            kind=rng.choice([Synapse.Kind.CHEMICAL] * 3 + [Synapse.Kind.ELECTRICAL]))
    for selection in [{}, {"runs": [runs[0].pk]}, {"min_confidence": 0.5},
                      {"runs": runs, "min_confidence": 0.2}]:
        matrix = wiring_matrix(dataset=dataset, **selection)
        assert matrix.synapses > 10
        gaps = wiring_matrix(dataset=dataset, kind="electrical", **selection)
        assert gaps.synapses > 2
        for cell in cells:
            found = cell_partners(cell=cell, directions=("upstream", "downstream", "electrical"),
                                  **selection)
            expected = {}
            for pair in gaps.pairs:  # an unordered pair: the cell on either side
                if cell.pk in (pair.pre_cell_id, pair.post_cell_id):
                    other = pair.post_cell_id if pair.pre_cell_id == cell.pk else pair.pre_cell_id
                    expected[other] = pair
            got = {p.cell_id: p for p in found["electrical"]}
            assert {k: p.synapses for k, p in got.items()} == {
                k: p.synapses for k, p in expected.items()}, (selection, cell)
            for cell_id, partner in got.items():
                assert partner.weight == pytest.approx(expected[cell_id].weight)
            for direction, mine, theirs in (("downstream", "pre_cell_id", "post_cell_id"),
                                             ("upstream", "post_cell_id", "pre_cell_id")):
                expected = {getattr(p, theirs): p for p in matrix.pairs
                            if getattr(p, mine) == cell.pk}
                got = {p.cell_id: p for p in found[direction]}
                assert set(got) == set(expected), (selection, cell, direction)
                for cell_id, partner in got.items():
                    pair = expected[cell_id]
                    assert partner.synapses == pair.synapses
                    assert partner.contact_area_nm2 == pytest.approx(pair.contact_area_nm2)
                    assert partner.weight == pytest.approx(pair.weight)
                    assert partner.mean_confidence == pytest.approx(pair.mean_confidence)
                    assert partner.segment_id == Cell.objects.get(pk=cell_id).segment_id
