-- Small content travels in the Ingested event instead of the blob store (issue 8); the read model
-- keeps a copy, so reads of such an object (REST content, GraphQL content, graph nodes) need no blob.
-- NULL: the blob store holds the content (storage_location blob://sha256/<hash>).
ALTER TABLE data_objects ADD COLUMN content text;
