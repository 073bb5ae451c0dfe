"""What a developer's machine provisions for `make run` and the tests: Kafka, PostgreSQL, Redis."""
