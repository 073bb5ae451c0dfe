-- Queries over the audit log (issue 9): the history API filters by actor and time and pages by the
-- global sequence; `pipeline audit verify` reads each partition's rows in offset order beside the log, and
-- event streams read by (partition, offset), the position that is gap-free in commit order
-- (projections/event_stream.py explains why the global seq is not).
-- Only what these need, since every index slows the projection (and a rebuild) down: event-type and
-- aggregate-type filters walk the sequence (admin-only queries), times use a BRIN index (occurred_at
-- follows the sequence closely, so a block range index is small and nearly free to maintain).
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_position ON audit_log (topic_partition, topic_offset);
CREATE INDEX audit_log_occurred ON audit_log USING brin (occurred_at);
