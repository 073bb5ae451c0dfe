-- Annotations say who or what made them (DataObject.Annotated v2 ``source``: user, ingest,
-- graph:<execution id>; "unknown" for events written before it existed). Dead letters of the
-- projections can be resolved (`pipeline dlq retry|skip`): resolved rows stay as a record.
ALTER TABLE annotations ADD COLUMN source text NOT NULL DEFAULT 'unknown';

ALTER TABLE projection_dead_letters
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN resolution  text;
CREATE INDEX projection_dead_letters_unresolved ON projection_dead_letters (id) WHERE resolved_at IS NULL;
