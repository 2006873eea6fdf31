-- Each dispatcher's liveness. The deliveries a dispatcher holds (lease_owner = its name) stay
-- its own while its alive_until is ahead; once that lapses, any dispatcher hands them back in
-- one statement. Holding 20,000 deliveries then costs one row's update per heartbeat, not
-- 20,000.
CREATE TABLE dispatcher_liveness (
    owner TEXT PRIMARY KEY,
    alive_until BIGINT NOT NULL
);
