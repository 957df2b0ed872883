"""``ecrf validate``: the traceability report from a test run, and the installation check."""

from __future__ import annotations

from flask.cli import AppGroup

from ecrf.validation.install import install_command
from ecrf.validation.report import report_command

validate = AppGroup("validate", help="Validation evidence: traceability report, installation check.")
validate.add_command(report_command)
validate.add_command(install_command)


@validate.command("matrix")
def matrix_command():
    """Print the requirements catalogue as Markdown (the matrix of docs/compliance.md)."""
    import click

    from ecrf.validation.requirements import markdown_matrix

    click.echo(markdown_matrix(), nl=False)
