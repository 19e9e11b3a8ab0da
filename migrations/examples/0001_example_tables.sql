-- Tables that the example pipelines in pipelines/examples/ deliver to. Each is keyed by
-- the message id, so that a redelivered message is written once.
CREATE TABLE IF NOT EXISTS wald_example_events (
    message_id  TEXT PRIMARY KEY,
    event_key   TEXT,
    actor       TEXT,
    body        JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS wald_example_actors (
    message_id TEXT PRIMARY KEY,
    actor      TEXT
);

CREATE TABLE IF NOT EXISTS wald_example_orders (
    id   TEXT PRIMARY KEY,
    body JSONB NOT NULL
);
