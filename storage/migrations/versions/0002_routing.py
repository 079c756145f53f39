"""routing: capacity ledger, presence, skills, queues

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 15:20:17.896138
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("capacity", sa.Integer(), server_default=sa.text("100"), nullable=False)
        )
        batch_op.add_column(sa.Column("load", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("skills", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))
        batch_op.add_column(
            sa.Column("channel_kinds", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("status", sa.String(length=10), server_default=sa.text("'online'"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("presence", sa.String(length=10), server_default=sa.text("'offline'"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("presence_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("presence_changed_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_assigned_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_check_constraint(
            op.f("ck_agents_load_within_capacity"), "load >= 0 AND load <= capacity"
        )

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("enqueued_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("assigned_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("assigned_cost", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("first_reply_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("routing_version", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("offered_to", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True)
        )
        batch_op.add_column(
            sa.Column("offer_expires_at", storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("declined_by", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_conversations_offered_to_agents"), "agents", ["offered_to"], ["id"]
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_queue_enqueued_at"), ["queue", "enqueued_at"], unique=False
        )

    op.create_table(
        "queues",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_queues")),
    )
    op.create_table(
        "queue_waits",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("channel_kind", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("agent_id", sa.BigInteger(), nullable=True),
        sa.Column("breached_at", storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_waits")),
    )
    with op.batch_alter_table("queue_waits", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_queue_waits_queue_ended_at"), ["queue", "ended_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_queue_waits_conversation_id_ended_at"),
            ["conversation_id", "ended_at"],
            unique=False,
        )


def downgrade() -> None:
    op.drop_table("queue_waits")
    op.drop_table("queues")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversations_queue_enqueued_at"))
        batch_op.drop_constraint(batch_op.f("fk_conversations_offered_to_agents"), type_="foreignkey")
        batch_op.drop_column("declined_by")
        batch_op.drop_column("offer_expires_at")
        batch_op.drop_column("offered_to")
        batch_op.drop_column("routing_version")
        batch_op.drop_column("first_reply_at")
        batch_op.drop_column("assigned_cost")
        batch_op.drop_column("assigned_at")
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("queue")

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_agents_load_within_capacity"), type_="check")
        batch_op.drop_column("last_assigned_at")
        batch_op.drop_column("presence_changed_at")
        batch_op.drop_column("presence_at")
        batch_op.drop_column("presence")
        batch_op.drop_column("status")
        batch_op.drop_column("channel_kinds")
        batch_op.drop_column("skills")
        batch_op.drop_column("load")
        batch_op.drop_column("capacity")
