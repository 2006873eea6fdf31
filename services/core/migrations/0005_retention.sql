-- Idempotency records are pruned once they are 24 hours old, deliveries (and their
-- attempts) after the delivery retention: both are found by age.
CREATE INDEX idempotency_created ON idempotency (created_at);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);
