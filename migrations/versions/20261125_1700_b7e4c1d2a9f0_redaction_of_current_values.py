"""Redaction of current values: an item value masked by a data manager keeps the seq of the
audit record of that redaction, so that views and exports show it as redacted.

Adding a nullable column does not rebuild the table on SQLite (item_value has no trigger anyway).

Revision ID: b7e4c1d2a9f0
Revises: c3f5a7d9e1b2
Create Date: 2026-11-25 17:00:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'b7e4c1d2a9f0'
down_revision = 'c3f5a7d9e1b2'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('item_value', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('redacted_seq', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('item_value', schema=None) as batch_op:
        batch_op.drop_column('redacted_seq')
