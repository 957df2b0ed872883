"""Kept summaries: per-subject SDV counts, kept current by every change.

The counts are derived from audited rows and filled for the whole study the first time they are
read (``ecrf.review.sdv.ensure_counts``): this migration only creates the tables.

Revision ID: 5b0c1e7a9d21
Revises: 37ccccd00230
Create Date: 2026-11-25 14:45:00

"""
from alembic import op
import sqlalchemy as sa

import ecrf.database


# revision identifiers, used by Alembic.
revision = '5b0c1e7a9d21'
down_revision = '37ccccd00230'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('sdv_count',
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('values_n', sa.Integer(), nullable=False),
    sa.Column('verified_n', sa.Integer(), nullable=False),
    sa.Column('critical_n', sa.Integer(), nullable=False),
    sa.Column('critical_verified_n', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_sdv_count_subject_id_subject')),
    sa.PrimaryKeyConstraint('subject_id', name=op.f('pk_sdv_count'))
    )
    op.create_table('summary_state',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('filled_at', ecrf.database.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_summary_state'))
    )


def downgrade():
    op.drop_table('summary_state')
    op.drop_table('sdv_count')
