"""The 12 groups of Hard-Spurious-ImageNet and their Easy/Medium/Hard categories (paper 000, §4).

Sizes are given small→large; the paper's 56/84/112 at 224 are 1/4, 3/8, 1/2 of the side, and the
category of a group depends on the size's rank, so any resolution keeps the paper's mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

PLACEMENTS = ("CeO", "CoO", "CeR", "CoR")  # position (Ce centre / Co top-right corner) x background
SIZE_FRACTIONS = (1 / 4, 3 / 8, 1 / 2)
CATEGORIES = ("easy", "medium", "hard")


def default_sizes(resolution: int) -> tuple[int, ...]:
    """56/84/112 at 224, 16/24/32 at 64."""
    return tuple(int(round(resolution * f)) for f in SIZE_FRACTIONS)


def category(placement: str, size_rank: int) -> str:
    """Easy = CeO/CoO at the two larger sizes; Hard = CeR/CoR at the two smaller; the rest Medium."""
    own_background = placement.endswith("O")
    if own_background:
        return "easy" if size_rank >= 1 else "medium"
    return "hard" if size_rank <= 1 else "medium"


@dataclass(frozen=True)
class Group:
    id: int
    placement: str  # CeO | CoO | CeR | CoR
    size: int  # side of the pasted object in pixels
    size_rank: int  # 0 = smallest

    @property
    def name(self) -> str:
        return f"{self.placement}_{self.size}"

    @property
    def position(self) -> str:
        return "center" if self.placement.startswith("Ce") else "corner"

    @property
    def background(self) -> str:
        return self.placement[-1]  # "O" own, "R" random other class

    @property
    def category(self) -> str:
        return category(self.placement, self.size_rank)


def make_groups(sizes: tuple[int, ...] | list[int]) -> list[Group]:
    """Groups ordered size-major (CeO_56, CoO_56, CeR_56, CoR_56, CeO_84, ...): id = position in list."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or list(sizes) != sorted(set(sizes)):
        raise ValueError(f"need three distinct sizes, small to large; got {sizes}")
    return [
        Group(id=rank * len(PLACEMENTS) + p, placement=placement, size=size, size_rank=rank)
        for rank, size in enumerate(sizes)
        for p, placement in enumerate(PLACEMENTS)
    ]


def placement_xy(position: str, size: int, resolution: int) -> tuple[int, int]:
    """Top-left pixel of the pasted object: centred, or top-right corner (x = res - s, y = 0)."""
    if position == "center":
        off = (resolution - size) // 2
        return off, off
    if position == "corner":
        return resolution - size, 0
    raise ValueError(f"unknown position {position!r}; expected 'center' or 'corner'")
