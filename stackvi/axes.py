"""Names of the axes stackvi creates: particles, enumerated supports, MVD branches.

Plates are named by their user, with plain strings. The axes stackvi adds to a
log-density are named with :class:`Axis`, a ``str`` that is never equal to a
plain string, so a user's plate called ``"particles"`` (or ``"enum:z"``) can
never be confused with ours.

>>> PARTICLES == "particles", PARTICLES == Axis("particles"), str(PARTICLES)
(False, True, 'particles')
>>> resolve_name("particles", (PARTICLES, "data")) is PARTICLES
True
>>> resolve_name("particles", ("particles", PARTICLES))
'particles'
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Axis", "PARTICLES", "enum_axis", "branch_axis", "resolve_name", "is_internal"]


class Axis(str):
    """An axis name made by stackvi; equal only to another :class:`Axis` with the same text."""

    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, Axis) and str.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((Axis, str.__str__(self)))

    def __repr__(self):
        return f"Axis({str.__repr__(self)})"

    def __reduce__(self):
        return Axis, (str.__str__(self),)


PARTICLES = Axis("particles")


def enum_axis(site: str) -> Axis:
    """The axis along which an enumerated site's support is laid out."""
    return Axis(f"enum:{site}")


def branch_axis(site: str) -> Axis:
    """The axis along which a branched site's values (sample, then branches) are laid out."""
    return Axis(f"mvd:{site}")


def is_internal(name) -> bool:
    return isinstance(name, Axis)


def resolve_name(name, available: Iterable):
    """``name`` as it appears in ``available``: a plain string names a plate first.

    A plain string that matches no plate but the text of one of our axes
    (``"particles"``) means that axis, so programs may write either.
    """
    available = list(available)
    if isinstance(name, Axis) or name in available:
        return name
    matches = [a for a in available if isinstance(a, Axis) and str.__eq__(a, name)]
    return matches[0] if matches else name
