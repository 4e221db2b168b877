"""The record every partner-assignment method produces: one row per (site, postsynaptic cell).

A *site* is one synapse candidate (a detected cleft / junction, or an annotated synapse). A
monadic site gives one row; a polyadic site gives one row per postsynaptic partner, all with the
same ``site_id``, ``pre_id`` and ``pre_point``.  Rows whose pre and post are the same cell, or
whose pre or post is background (segment 0), are kept but flagged: they are evidence about the
segmentation, not connections, and the wiring matrix does not count them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

Point = tuple[float, float, float]

#: Values of :attr:`PartnerRow.flag`.
FLAG_NONE = ""
FLAG_SELF_CONTACT = "self_contact"  # pre == post: a split error or an autapse-like contact
FLAG_BACKGROUND = "background"  # pre or post is unlabelled background (segment 0)
FLAGS = (FLAG_NONE, FLAG_SELF_CONTACT, FLAG_BACKGROUND)


@dataclass(frozen=True)
class PartnerRow:
    """One presynaptic cell -> one postsynaptic cell at one site.

    Attributes
    ----------
    site_id : int
        Id of the site (candidate) the row belongs to; the rows of a polyadic site share it.
    pre_id, post_id : int
        Segment ids of the presynaptic and postsynaptic cells; 0 is background.
    pre_point, post_point, center : tuple of float
        (z, y, x) nm: a point inside the presynaptic cell near the site, one inside the
        postsynaptic cell, and the centre of the site's cleft / contact.
    size_voxels : int
        Voxels of the site (the candidate's mask); the same on every row of a site.
    size_nm3 : float
        ``size_voxels`` times the voxel volume.
    contact_area_nm2 : float
        Area of the contact between the pre and post cell at this site.
    confidence : float
        0..1, the method's belief that this row is a true synapse with this direction.
    weight : float
        0..1, this partner's share of the site's evidence: the diffusion arrival share for the
        diffusion method, the contact-area share for the others (1.0 for a monadic site).
    flag : str
        One of :data:`FLAGS`; set rows are not connections.
    method : str
        ``"contact"``, ``"vesicle"`` or ``"diffusion"``.
    """

    site_id: int
    pre_id: int
    post_id: int
    pre_point: Point
    post_point: Point
    center: Point
    size_voxels: int
    size_nm3: float
    contact_area_nm2: float
    confidence: float
    weight: float
    flag: str
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def counted(self) -> bool:
        """Whether the row is a connection (not flagged)."""
        return self.flag == FLAG_NONE


def partner_flag(pre_id: int, post_id: int) -> str:
    """The flag of a (pre, post) pair: background first, then self-contact."""
    if int(pre_id) == 0 or int(post_id) == 0:
        return FLAG_BACKGROUND
    if int(pre_id) == int(post_id):
        return FLAG_SELF_CONTACT
    return FLAG_NONE
