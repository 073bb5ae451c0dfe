-- Full-text search over data objects: the text of text and JSON content, plus metadata values.
ALTER TABLE data_objects ADD COLUMN search tsvector NOT NULL DEFAULT ''::tsvector;
CREATE INDEX data_objects_search ON data_objects USING gin (search);
CREATE INDEX data_objects_metadata ON data_objects USING gin (metadata jsonb_path_ops);
