-- Event streams read the audit log by (partition, offset): the position that is gap-free in commit
-- order (projections/event_stream.py explains why the global seq is not).
CREATE INDEX audit_log_position ON audit_log (topic_partition, topic_offset);
