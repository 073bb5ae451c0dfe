-- Read models of the foundation: data objects, annotations, the audit log, and the runner's
-- bookkeeping (consumer positions and the last applied version of each aggregate).
CREATE TABLE projection_positions (
    projection  text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

CREATE TABLE aggregate_versions (
    aggregate_id uuid PRIMARY KEY,
    version      integer NOT NULL
);

CREATE TABLE data_objects (
    object_id        uuid PRIMARY KEY,
    object_type      text NOT NULL,
    content_type     text NOT NULL,
    content_hash     text NOT NULL,
    storage_location text NOT NULL,
    size             bigint NOT NULL,
    metadata         jsonb NOT NULL,
    owner            text NOT NULL,
    version          integer NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX data_objects_owner ON data_objects (owner, created_at DESC);

CREATE TABLE annotations (
    annotation_id   text PRIMARY KEY,
    object_id       uuid NOT NULL,
    annotator_id    text NOT NULL,
    annotation_type text NOT NULL,
    content         jsonb NOT NULL,
    confidence      double precision NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX annotations_object ON annotations (object_id, created_at);

CREATE TABLE audit_log (
    seq               bigserial PRIMARY KEY,
    event_id          text NOT NULL UNIQUE,
    aggregate_id      uuid NOT NULL,
    aggregate_version integer NOT NULL,
    event_type        text NOT NULL,
    schema_version    integer NOT NULL,
    command_id        text NOT NULL,
    correlation_id    text NOT NULL,
    causation_id      text NOT NULL,
    actor             text NOT NULL,
    actor_role        text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    prev_hash         text NOT NULL,
    hash              text NOT NULL,
    topic_partition   integer NOT NULL,
    topic_offset      bigint NOT NULL,
    payload           jsonb NOT NULL,
    UNIQUE (aggregate_id, aggregate_version)
);

CREATE TABLE projection_dead_letters (
    id              bigserial PRIMARY KEY,
    topic_partition integer NOT NULL,
    topic_offset    bigint NOT NULL,
    reason          text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
