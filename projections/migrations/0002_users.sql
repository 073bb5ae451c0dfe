-- The users read model (issue #3). Credentials are NOT here: see domain/user.py.
CREATE TABLE users (
    user_id       uuid PRIMARY KEY,
    username      text NOT NULL,
    role          text NOT NULL,
    credential_id text NOT NULL,
    disabled      boolean NOT NULL DEFAULT false,
    version       integer NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_username ON users (lower(username));
CREATE INDEX users_role ON users (role) WHERE NOT disabled;
