-- Rows as the example pipelines write them, for trying queries before any message has
-- been delivered. Apply after migrations/examples/.
INSERT INTO wald_example_orders (id, body) VALUES
    ('01J0000000000000000000SEED1', '{"id": "o-1001", "customer": "c-17", "total_cents": 4599}'),
    ('01J0000000000000000000SEED2', '{"id": "o-1002", "customer": "c-42", "total_cents": 1250}')
ON CONFLICT (id) DO NOTHING;

INSERT INTO wald_example_events (message_id, event_key, actor, body, received_at) VALUES
    ('01J0000000000000000000SEED3', 'c-17', 'c-17', '{"actor": "c-17", "action": "login"}', now())
ON CONFLICT (message_id) DO NOTHING;
