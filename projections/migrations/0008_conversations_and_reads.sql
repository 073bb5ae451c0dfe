-- Conversations (issue 12, chat): each user's chats, folded from the Conversation aggregate's events.
-- One row per message or response, numbered by the aggregate version, so the history reads in order.
CREATE TABLE conversations (
    conversation_id uuid PRIMARY KEY,
    owner           text NOT NULL,
    version         integer NOT NULL,
    message_count   integer NOT NULL DEFAULT 0,  -- messages and responses
    started_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX conversations_owner ON conversations (owner, updated_at DESC);

CREATE TABLE conversation_messages (
    conversation_id uuid NOT NULL REFERENCES conversations ON DELETE CASCADE,
    seq             integer NOT NULL,  -- the event's aggregate version
    message_id      text NOT NULL,     -- a response carries the id of the message it answers
    role            text NOT NULL,     -- 'user' (a posted message) or 'assistant' (a response)
    kind            text NOT NULL,     -- 'message', or the response's kind (answer, search, status, ...)
    author          text NOT NULL,
    content         text NOT NULL,
    sources         jsonb NOT NULL DEFAULT '[]',
    data            jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

-- Notifications read (issue 12): the Inbox aggregate's NotificationsRead events, kept so that a
-- notification projected after its mark (a rebuild applies partitions in another interleaving)
-- still starts read. Marks of given ids, and "everything caused up to then" marks.
CREATE TABLE notification_read_marks (
    user_id         text NOT NULL,
    notification_id text NOT NULL,
    read_at         timestamptz NOT NULL,
    PRIMARY KEY (user_id, notification_id)
);
CREATE TABLE notification_read_all (
    user_id text NOT NULL,
    read_at timestamptz NOT NULL,  -- every notification of the user created at or before this is read
    PRIMARY KEY (user_id, read_at)
);
