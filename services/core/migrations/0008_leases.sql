-- The deliveries a dispatcher holds, found by its name (lease renewals, hand-back at shutdown).
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_owner) WHERE lease_owner <> '';
