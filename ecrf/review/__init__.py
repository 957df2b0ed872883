"""Review of the data: queries, source data verification, electronic signatures, freeze and lock.

The models live here (one migration); each area has its service module and its blueprint.
"""
