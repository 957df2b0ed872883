"""The audit trail's subject index carries seq: "this subject's rows after seq N" (the changes
since a signature) reads only those rows, not every row of the subject.

Revision ID: 8e41c2d07b3a
Revises: 5fd52b6f35a6
Create Date: 2026-11-25 15:45:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '8e41c2d07b3a'
down_revision = '5fd52b6f35a6'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('audit_trail', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_trail_subject')
        batch_op.create_index('ix_audit_trail_subject', ['subject', 'seq'], unique=False)


def downgrade():
    with op.batch_alter_table('audit_trail', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_trail_subject')
        batch_op.create_index('ix_audit_trail_subject', ['subject'], unique=False)
