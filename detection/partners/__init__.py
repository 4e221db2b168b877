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

Each method is two steps: a per-candidate decision (:func:`partner_choices`), which reads
the arrays near the candidate only and so runs on a crop as well as on the volume, and the
grouping of candidates into polyadic sites (:func:`partner_rows`), which needs all the
candidates.  :mod:`detection.partners.blocks` runs the first block by block.
"""

from __future__ import annotations

from detection.errors import InputError
from detection.partners.contact import (
    assign_by_contact,
    contact_choices,
    interface_scores,
    site_interfaces,
    site_scores,
)
from detection.partners.diffusion import assign_by_diffusion, diffusion_choices
from detection.partners.records import FLAGS, PartnerRow, partner_flag
from detection.partners.rows import Choice, build_rows
from detection.partners.vesicle import assign_by_vesicles, vesicle_choices

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
            raise InputError("the contact method needs interface scores from an interface "
                             "classifier")
        return assign_by_contact(sites, segmentation, voxel_size=voxel_size,
                                 interfaces=interfaces, scores=scores,
                                 local_scores=local_scores, **options)
    if method in ("vesicle", "diffusion"):
        if presynaptic is None:
            raise InputError(f"the {method} method needs a presynaptic (vesicle cloud) map")
        function = assign_by_vesicles if method == "vesicle" else assign_by_diffusion
        return function(sites, segmentation, presynaptic, voxel_size=voxel_size, **options)
    raise InputError(f"unknown partner-assignment method {method!r}; methods: "
                     + ", ".join(METHODS))


_CHOICES = {"contact": contact_choices, "vesicle": vesicle_choices,
            "diffusion": diffusion_choices}


def partner_choices_function(method: str):
    """The per-candidate step of a method."""
    if method not in _CHOICES:
        raise InputError(f"unknown partner-assignment method {method!r}; methods: "
                         + ", ".join(METHODS))
    return _CHOICES[method]


def partner_choices(method: str, sites, segmentation, *, voxel_size, presynaptic=None,
                    offset=(0, 0, 0), **options) -> list[Choice]:
    """The per-candidate decisions of a method, ordered by candidate label.

    `options` are the method's options but ``group_distance_nm`` (that is
    :func:`partner_rows`'); the contact method takes its scores as in
    :func:`assign_partners`.  `offset` is the volume voxel of the arrays' first voxel when
    they are a crop: positions come out in the volume's frame.
    """
    function = partner_choices_function(method)
    if method == "contact":
        if options.get("local_scores") is None and (options.get("interfaces") is None
                                                    or options.get("scores") is None):
            raise InputError("the contact method needs interface scores from an interface "
                             "classifier")
        return function(sites, segmentation, voxel_size=voxel_size, offset=offset, **options)
    if presynaptic is None:
        raise InputError(f"the {method} method needs a presynaptic (vesicle cloud) map")
    return function(sites, segmentation, presynaptic, voxel_size=voxel_size, offset=offset,
                    **options)


def partner_rows(method: str, choices: list[Choice], *, voxel_size,
                 group_distance_nm: float = 300.0) -> list[PartnerRow]:
    """Rows of the candidates' choices, polyadic sites grouped (ordered by site id)."""
    return build_rows(choices, voxel_size=tuple(float(v) for v in voxel_size), method=method,
                      group_distance_nm=group_distance_nm)


def rows_to_pairs(rows) -> list[tuple[int, int]]:
    """(pre, post) of the rows that are connections (not flagged)."""
    return [(r.pre_id, r.post_id) for r in rows if r.counted]


__all__ = ["FLAGS", "METHODS", "Choice", "PartnerRow", "assign_by_contact",
           "assign_by_diffusion", "assign_by_vesicles", "assign_partners", "interface_scores",
           "partner_choices", "partner_choices_function", "partner_flag", "partner_rows",
           "rows_to_pairs", "site_interfaces", "site_scores"]
