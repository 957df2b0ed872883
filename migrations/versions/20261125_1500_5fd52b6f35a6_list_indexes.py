"""Indexes for list pages whose filter no index served (tests/test_query_plans.py): the audit
viewer's user filter, the exports of a site, and one CRF's forms across subjects (serious
adverse events on the study home).

Revision ID: 5fd52b6f35a6
Revises: 5b0c1e7a9d21
Create Date: 2026-11-25 15:00:00

"""
from alembic import op
import sqlalchemy as sa

import ecrf.database


# revision identifiers, used by Alembic.
revision = '5fd52b6f35a6'
down_revision = '5b0c1e7a9d21'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('audit_trail', schema=None) as batch_op:
        batch_op.create_index('ix_audit_trail_username', ['username', 'seq'], unique=False)

    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_job_site_code'), ['site_code'], unique=False)

    with op.batch_alter_table('form_instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_form_instance_crf_key'), ['crf_key'], unique=False)


def downgrade():
    with op.batch_alter_table('form_instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_form_instance_crf_key'))

    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_job_site_code'))

    with op.batch_alter_table('audit_trail', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_trail_username')
