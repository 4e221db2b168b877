"""Synaptic partner assignment: from synapse sites and a segmentation to partner rows.

Three methods behind one interface, :func:`assign_partners`:

``contact``
    SynEM-like: the directed scores of the contact interfaces a site lies on
    (:mod:`detection.partners.contact`).
``vesicle``
    SyConn-like: the side holding the vesicle cloud is presynaptic
    (:mod:`detection.partners.vesicle`).
``diffusion``
    Cnapse-like: Monte-Carlo transmitter diffusion from the active zone
    (:mod:`detection.partners.diffusion`).

Each returns :class:`~detection.partners.records.PartnerRow` objects, one per
(site, postsynaptic cell); polyadic sites give several rows with one ``site_id``.
"""

from __future__ import annotations

from detection.partners.contact import (
    assign_by_contact,
    interface_scores,
    site_interfaces,
    site_scores,
)
from detection.partners.diffusion import assign_by_diffusion
from detection.partners.records import FLAGS, PartnerRow, partner_flag
from detection.partners.vesicle import assign_by_vesicles

METHODS = ("contact", "vesicle", "diffusion")


def assign_partners(method: str, sites, segmentation, *, voxel_size, presynaptic=None,
                    interfaces=None, scores=None, local_scores=None,
                    **options) -> list[PartnerRow]:
    """Assign partners with one of :data:`METHODS`.

    ``contact`` needs interface scores (`local_scores`, or `interfaces` and `scores`);
    ``vesicle`` and ``diffusion`` need the `presynaptic` map.  Other keyword options go to
    the method's function.
    """
    if method == "contact":
        if local_scores is None and (interfaces is None or scores is None):
            raise ValueError("the contact method needs interface scores from an interface "
                             "classifier")
        return assign_by_contact(sites, segmentation, voxel_size=voxel_size,
                                 interfaces=interfaces, scores=scores,
                                 local_scores=local_scores, **options)
    if method in ("vesicle", "diffusion"):
        if presynaptic is None:
            raise ValueError(f"the {method} method needs a presynaptic (vesicle cloud) map")
        function = assign_by_vesicles if method == "vesicle" else assign_by_diffusion
        return function(sites, segmentation, presynaptic, voxel_size=voxel_size, **options)
    raise ValueError(f"unknown partner-assignment method {method!r}; methods: "
                     + ", ".join(METHODS))


def rows_to_pairs(rows) -> list[tuple[int, int]]:
    """(pre, post) of the rows that are connections (not flagged)."""
    return [(r.pre_id, r.post_id) for r in rows if r.counted]


__all__ = ["FLAGS", "METHODS", "PartnerRow", "assign_by_contact", "assign_by_diffusion",
           "assign_by_vesicles", "assign_partners", "interface_scores", "partner_flag",
           "rows_to_pairs", "site_interfaces", "site_scores"]
