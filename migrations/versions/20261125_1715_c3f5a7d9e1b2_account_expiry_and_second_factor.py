"""Accounts get an expiry date and an optional second factor (TOTP, RFC 6238).

Revision ID: c3f5a7d9e1b2
Revises: 8e41c2d07b3a
Create Date: 2026-11-25 17:15:00

"""
import sqlalchemy as sa
from alembic import op

from ecrf.database import UTCDateTime

# revision identifiers, used by Alembic.
revision = 'c3f5a7d9e1b2'
down_revision = '8e41c2d07b3a'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('totp_secret', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('totp_confirmed_at', UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('totp_last_step', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('totp_last_step')
        batch_op.drop_column('totp_confirmed_at')
        batch_op.drop_column('totp_secret')
        batch_op.drop_column('expires_at')
