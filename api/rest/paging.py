"""Limits shared by the paginated REST lists."""

# Deeper pages are refused (400) rather than scanned, and an offset must fit PostgreSQL's bigint.
MAX_OFFSET = 100_000
