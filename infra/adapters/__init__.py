"""Adapters: Kafka topics, PostgreSQL, the blob store, the codec, the command bus, credentials."""
