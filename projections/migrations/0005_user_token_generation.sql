-- A user's token generation (issue #7): it grows with each password change, access tokens carry the
-- generation they were issued under, and a token of an older generation is refused. So a password
-- change ends every other session at once, checked from the same cached row as role and disabled.
ALTER TABLE users ADD COLUMN token_generation integer NOT NULL DEFAULT 0;
