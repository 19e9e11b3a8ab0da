-- wald's transaction status store on Postgres: one row per acknowledged message.
-- Applied by `wald serve` at start (tracked in `_wald_migrations`).
CREATE TABLE IF NOT EXISTS wald_message_status (
    transaction_id uuid        NOT NULL,
    message_id     uuid        NOT NULL,
    namespace      text        NOT NULL,
    log_offset     bigint      NOT NULL,
    accepted_at    timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    -- {"<target>": {"state": "pending", "attempts": 0, "last_error": null, "updated_at_ms": ...}}
    targets        jsonb       NOT NULL,
    PRIMARY KEY (transaction_id, message_id)
);

-- Expiry deletes by last change.
CREATE INDEX IF NOT EXISTS wald_message_status_updated_at ON wald_message_status (updated_at);
