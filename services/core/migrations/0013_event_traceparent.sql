-- The W3C traceparent of the call that wrote the event (NULL for events no call caused:
-- deadlines, fan-out, retention). The relay sends it as an AMQP header and the dispatcher
-- continues it on every webhook attempt.
ALTER TABLE events ADD COLUMN traceparent TEXT;
