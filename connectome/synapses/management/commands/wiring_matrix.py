from django.core.management.base import BaseCommand, CommandError

from connectome.jobs.command import resolve_dataset
from connectome.synapses.exports import (
    UNTYPED_NODE,
    export_wiring_csv,
    export_wiring_graphml,
)
from connectome.synapses.models import SynapseRun
from connectome.synapses.selectors import ALL_RUNS, selected_runs
from connectome.synapses.wiring import ALL_KINDS, GROUPINGS, KINDS, wiring_matrix

SHOWN = 10


class Command(BaseCommand):
    help = (
        "Aggregate the dataset's synapses into a wiring matrix per cell or cell-type pair; "
        "print a summary and write it as CSV and/or GraphML."
    )

    def add_arguments(self, parser):
        parser.add_argument("dataset", help="dataset id or name")
        parser.add_argument("--run", action="extend", nargs="+", default=None, metavar="NAME",
                            help="these synapse runs, summed, or 'all' (default: the "
                                 "dataset's default run: its current run, else its newest "
                                 "detection)")
        parser.add_argument("--kind", choices=[*KINDS, ALL_KINDS], default=KINDS[0],
                            help="chemical (directed), electrical (unordered pairs) or all")
        parser.add_argument("--min-confidence", type=float,
                            help="count only synapses with at least this confidence")
        parser.add_argument("--min-count", type=int, default=1,
                            help="keep only pairs with at least this many synapses")
        parser.add_argument("--by", choices=GROUPINGS, default="cell",
                            help="pairs of cells or of cell types")
        parser.add_argument("--csv", metavar="PATH", help="write the pairs as CSV")
        parser.add_argument("--graphml", metavar="PATH", help="write the graph as GraphML")

    def handle(self, *args, **options):
        dataset = resolve_dataset(options["dataset"])
        runs = self._runs(dataset, options["run"])
        if options["min_count"] < 1:
            raise CommandError(f"--min-count must be at least 1; got {options['min_count']}")
        matrix = wiring_matrix(
            dataset=dataset, runs=runs, min_confidence=options["min_confidence"],
            min_count=options["min_count"], group_by=options["by"], kind=options["kind"],
        )
        scope = ", ".join(r.name for r in runs) if runs is not None else "all runs"
        kind = "" if options["kind"] == KINDS[0] else f"{options['kind']} "
        self.stdout.write(
            f"wiring matrix of dataset '{dataset.name}' by {matrix.group_by} ({scope}): "
            f"{len(matrix)} {kind}pairs, {matrix.synapses} synapses"
        )
        try:
            if options["csv"]:
                export_wiring_csv(matrix, options["csv"])
                self.stdout.write(f"wrote {len(matrix)} rows to {options['csv']}")
            if options["graphml"]:
                graph = export_wiring_graphml(matrix, options["graphml"])
                self.stdout.write(f"wrote {graph.number_of_nodes()} nodes and "
                                  f"{graph.number_of_edges()} edges to {options['graphml']}")
        except OSError as exc:
            raise CommandError(f"cannot write the wiring matrix: {exc}") from exc
        if not (options["csv"] or options["graphml"]):
            self._show_strongest(matrix)

    def _runs(self, dataset, names):
        if not names:
            return selected_runs(dataset=dataset)
        if names == [ALL_RUNS]:
            return None
        runs = {r.name: r for r in SynapseRun.objects.filter(dataset=dataset, name__in=names)}
        missing = [n for n in names if n not in runs]
        if missing:
            known = ", ".join(
                SynapseRun.objects.filter(dataset=dataset).values_list("name", flat=True)[:20]
            ) or "none"
            raise CommandError(
                f"dataset '{dataset.name}' has no synapse run named '{missing[0]}' (runs: {known})"
            )
        return [runs[n] for n in dict.fromkeys(names)]

    def _show_strongest(self, matrix):
        strongest = sorted(matrix.pairs, key=lambda p: -p.synapses)[:SHOWN]
        for pair in strongest:
            arrow = "->" if pair.kind == KINDS[0] else "<->"
            if matrix.group_by == "cell":
                pre = pair.pre_name or pair.pre_segment_id
                post = pair.post_name or pair.post_segment_id
            else:
                pre, post = pair.pre_type or UNTYPED_NODE, pair.post_type or UNTYPED_NODE
            self.stdout.write(f"  {pre} {arrow} {post}: {pair.synapses}")
