-- Notifications: a read model of what a user should hear about (their execution finished, someone
-- else annotated or deleted their object, an admin changed their role). One row per causing event.
CREATE TABLE notification_subjects (
    aggregate_id uuid PRIMARY KEY,  -- an object or execution, and who is told about it
    owner        text NOT NULL
);

CREATE TABLE notifications (
    notification_id   text PRIMARY KEY,  -- the causing event's id: applying it twice adds nothing
    user_id           text NOT NULL,
    kind              text NOT NULL,
    message           text NOT NULL,
    data              jsonb NOT NULL,
    aggregate_id      uuid NOT NULL,
    aggregate_version integer NOT NULL,
    created_at        timestamptz NOT NULL,
    read_at           timestamptz
);
CREATE INDEX notifications_user ON notifications (user_id, created_at DESC);
CREATE INDEX notifications_cause ON notifications (aggregate_id, aggregate_version);
