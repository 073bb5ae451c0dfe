-- A tsvector holds at most 1 MiB (PostgreSQL's limit), and the searchable text is bounded to 1 MiB, but
-- the vector of a text can be larger than the text itself: each distinct word costs its bytes plus a
-- header and its positions, and compound tokens (hyphenated words, URLs, paths) add lexemes of their
-- parts. A plain 1 MiB text file of distinct short words made a 1.7 MB vector, whose INSERT failed with
-- program_limit_exceeded, and the projection stopped on that event. This function answers the vector
-- of the longest prefix (halving) that fits. The projection calls it only for texts over 64 KiB, so the
-- usual short text pays for no exception block.
CREATE FUNCTION bounded_tsvector(config regconfig, body text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    LOOP
        BEGIN
            RETURN to_tsvector(config, body);
        EXCEPTION WHEN program_limit_exceeded THEN
            body := left(body, length(body) / 2);
        END;
    END LOOP;
END
$$;
