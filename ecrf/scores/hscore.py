"""HScore for reactive hemophagocytic syndrome (Fardet et al., Arthritis Rheumatol 2014;66:2613-20): the
points table of nine variables (total 0-337) and the published table of probability by score.

Points (docs: shared/domain/README.md section 3; bounds inclusive exactly as the table writes them):

* known underlying immunosuppression (HIV, long-term glucocorticoids, ciclosporin, azathioprine): 18;
* temperature, deg C: < 38.4 -> 0, 38.4-39.4 -> 33, > 39.4 -> 49 (38.4 and 39.4 both score 33);
* organomegaly: hepatomegaly or splenomegaly -> 23, hepatomegaly and splenomegaly -> 38;
* cytopenias, number of lineages with Hb <= 9.2 g/dL, leukocytes <= 5 x10^9/L, platelets <= 110 x10^9/L:
  0 or 1 -> 0, 2 -> 24, 3 -> 34 (leukocytes = total white cells, not neutrophils as in HLH-2004);
* ferritin, ng/mL: < 2000 -> 0, 2000-6000 -> 35, > 6000 -> 50;
* triglycerides, mmol/L: < 1.5 -> 0, 1.5-4 -> 44, > 4 -> 64;
* fibrinogen, g/L: <= 2.5 -> 30;
* AST, U/L: >= 30 -> 19;
* hemophagocytosis on bone-marrow aspirate: 35.

A None input ("not done", "not known") scores 0 and is named in ``missing``; an organ or a lineage that is
None simply does not count (so splenomegaly with hepatomegaly unknown scores 23).

Probability: the row of Fardet's table with the highest HScore not above the score ("<= 90" -> < 1 %,
100 -> 1 %, ..., 240 -> 99 %, ">= 250" -> > 99 %); a score below 90 falls in the "<= 90" row. No
interpolation and no logistic formula: the formula some calculators use does not reproduce the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import ge, gt, le
from types import MappingProxyType

from ecrf.scores._common import Band, Number, band_points, checked, checked_flag

ITEMS = (
    "immunosuppression", "temperature", "organomegaly", "cytopenias", "ferritin", "triglycerides",
    "fibrinogen", "ast", "bone_marrow_hemophagocytosis",
)
MAX_TOTAL = 337

IMMUNOSUPPRESSION_POINTS = 18
TEMPERATURE: tuple[Band, ...] = ((gt, 39.4, 49), (ge, 38.4, 33))
ORGANOMEGALY_POINTS = (0, 23, 38)  # by number of enlarged organs (liver, spleen)
CYTOPENIA_POINTS = (0, 0, 24, 34)  # by number of cytopenic lineages
HEMOGLOBIN_MAX_G_DL = 9.2
LEUKOCYTES_MAX_G_L = 5.0
PLATELETS_MAX_G_L = 110.0
FERRITIN: tuple[Band, ...] = ((gt, 6000, 50), (ge, 2000, 35))
TRIGLYCERIDES: tuple[Band, ...] = ((gt, 4.0, 64), (ge, 1.5, 44))
FIBRINOGEN: tuple[Band, ...] = ((le, 2.5, 30),)
AST: tuple[Band, ...] = ((ge, 30, 19),)
HEMOPHAGOCYTOSIS_POINTS = 35

# Fardet 2014, probability of hemophagocytic syndrome: (HScore row, percent, qualifier). The first row stands
# for "<= 90" (< 1 %), the last for ">= 250" (> 99 %).
PROBABILITY_TABLE: tuple[tuple[int, int, str], ...] = (
    (90, 1, "<"), (100, 1, ""), (110, 3, ""), (120, 5, ""), (130, 9, ""), (140, 16, ""), (150, 25, ""),
    (160, 40, ""), (170, 54, ""), (180, 70, ""), (190, 80, ""), (200, 88, ""), (210, 93, ""), (220, 96, ""),
    (230, 98, ""), (240, 99, ""), (250, 99, ">"),
)


@dataclass(frozen=True, order=True)
class HScoreProbability:
    """One row of Fardet's probability table; ``str()`` gives e.g. "88 %", "< 1 %", "> 99 %".

    Instances order by row, which is also the order of the probabilities.
    """

    row: int
    percent: int
    qualifier: str = ""

    def __str__(self) -> str:
        return f"{self.qualifier} {self.percent} %".lstrip()


@dataclass(frozen=True)
class HScore:
    total: int
    points: MappingProxyType[str, int]  # item -> points, in the order of ITEMS
    probability: HScoreProbability
    missing: tuple[str, ...]  # names of the inputs that were None


def hscore_probability(score: int) -> HScoreProbability:
    """The probability row for ``score``: the highest row not above it (the "<= 90" row below 90)."""
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= MAX_TOTAL:
        raise ValueError(f"an HScore is a whole number from 0 to {MAX_TOTAL}, got {score!r}")
    chosen = PROBABILITY_TABLE[0]
    for row in PROBABILITY_TABLE:
        if row[0] <= score:
            chosen = row
    return HScoreProbability(*chosen)


def hscore(
    *,
    immunosuppression: bool | None,
    temperature_c: Number | None,
    hepatomegaly: bool | None,
    splenomegaly: bool | None,
    hemoglobin_g_dl: Number | None,
    leukocytes_g_l: Number | None,
    platelets_g_l: Number | None,
    ferritin_ng_ml: Number | None,
    triglycerides_mmol_l: Number | None,
    fibrinogen_g_l: Number | None,
    ast_u_l: Number | None,
    bone_marrow_hemophagocytosis: bool | None,
) -> HScore:
    """HScore points, total and probability; see the module docstring for the table."""
    inputs = {
        "immunosuppression": immunosuppression, "temperature_c": temperature_c, "hepatomegaly": hepatomegaly,
        "splenomegaly": splenomegaly, "hemoglobin_g_dl": hemoglobin_g_dl, "leukocytes_g_l": leukocytes_g_l,
        "platelets_g_l": platelets_g_l, "ferritin_ng_ml": ferritin_ng_ml,
        "triglycerides_mmol_l": triglycerides_mmol_l, "fibrinogen_g_l": fibrinogen_g_l, "ast_u_l": ast_u_l,
        "bone_marrow_hemophagocytosis": bone_marrow_hemophagocytosis,
    }

    def flag(name: str) -> bool:
        value = inputs[name]
        return value is not None and checked_flag(name, value)

    def number(name: str, bands: tuple[Band, ...]) -> int:
        value = inputs[name]
        return 0 if value is None else band_points(checked(name, value), bands)

    def at_most(name: str, limit: float) -> bool:
        value = inputs[name]
        return value is not None and checked(name, value) <= limit

    organs = flag("hepatomegaly") + flag("splenomegaly")
    lineages = (
        at_most("hemoglobin_g_dl", HEMOGLOBIN_MAX_G_DL)
        + at_most("leukocytes_g_l", LEUKOCYTES_MAX_G_L)
        + at_most("platelets_g_l", PLATELETS_MAX_G_L)
    )
    points = {
        "immunosuppression": IMMUNOSUPPRESSION_POINTS if flag("immunosuppression") else 0,
        "temperature": number("temperature_c", TEMPERATURE),
        "organomegaly": ORGANOMEGALY_POINTS[organs],
        "cytopenias": CYTOPENIA_POINTS[lineages],
        "ferritin": number("ferritin_ng_ml", FERRITIN),
        "triglycerides": number("triglycerides_mmol_l", TRIGLYCERIDES),
        "fibrinogen": number("fibrinogen_g_l", FIBRINOGEN),
        "ast": number("ast_u_l", AST),
        "bone_marrow_hemophagocytosis":
            HEMOPHAGOCYTOSIS_POINTS if flag("bone_marrow_hemophagocytosis") else 0,
    }
    total = sum(points.values())
    return HScore(
        total=total,
        points=MappingProxyType(points),
        probability=hscore_probability(total),
        missing=tuple(name for name, value in inputs.items() if value is None),
    )
