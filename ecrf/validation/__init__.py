"""Validation evidence: the requirements the software meets, traced to the tests that show it
(``ecrf validate report``), and the installation check of a production system
(``ecrf validate install``)."""
