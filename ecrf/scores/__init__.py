"""Clinical scores for the JAKAHDI eCRF, as pure functions (no Flask, no database).

* :func:`sofa` (+ :func:`pao2_fio2_ratio`): SOFA, Vincent 1996 as tabulated for Sepsis-3;
* :func:`hscore` (+ :func:`hscore_probability`): HScore, Fardet 2014, with its probability table;
* :func:`hlh2004`: HLH-2004 diagnostic criteria, Henter 2007.

Sources, thresholds and boundary rules: the domain notes (shared/domain/README.md, sections 2-4),
restated in each module.
"""

from ecrf.scores.hlh2004 import Hlh2004, Status, hlh2004
from ecrf.scores.hscore import HScore, HScoreProbability, hscore, hscore_probability
from ecrf.scores.sofa import SofaScore, pao2_fio2_ratio, sofa

__all__ = [
    "HScore", "HScoreProbability", "Hlh2004", "SofaScore", "Status", "hlh2004", "hscore",
    "hscore_probability", "pao2_fio2_ratio", "sofa",
]
