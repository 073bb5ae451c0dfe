-- The executions read model: one row per execution, node states in a jsonb map.
CREATE TABLE executions (
    execution_id           uuid PRIMARY KEY,
    status                 text NOT NULL,
    progress               double precision NOT NULL DEFAULT 0,
    current_node           text,
    errors                 jsonb NOT NULL DEFAULT '[]',
    nodes                  jsonb NOT NULL,  -- node id -> {type, status, started_at, completed_at, summary, error}
    node_order             jsonb NOT NULL,
    graph                  jsonb NOT NULL,
    options                jsonb NOT NULL,
    estimated_time_seconds double precision NOT NULL,
    submitter              text NOT NULL,
    version                integer NOT NULL,
    submitted_at           timestamptz NOT NULL,
    started_at             timestamptz,
    completed_at           timestamptz,
    updated_at             timestamptz NOT NULL
);
CREATE INDEX executions_submitter ON executions (submitter, submitted_at DESC);
CREATE INDEX executions_status ON executions (status, submitted_at DESC);
