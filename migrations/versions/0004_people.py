"""API keys per user, KB owners and sharing

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_table(
        "kb_shares",
        sa.Column("kb_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.ForeignKeyConstraint(["kb_id"], ["kbs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("kb_id", "user_id"),
    )
    with op.batch_alter_table("kbs") as batch:
        batch.add_column(sa.Column("owner_id", Id, nullable=True))
        batch.add_column(sa.Column("visibility", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("kbs") as batch:
        batch.drop_column("visibility")
        batch.drop_column("owner_id")
    op.drop_table("kb_shares")
    op.drop_table("api_keys")
