-- Search results show a highlighted snippet (ts_headline), which needs the text itself, not only its
-- tsvector: the first part of each object's searchable text is kept beside the vector (issue 10).
ALTER TABLE data_objects ADD COLUMN search_text text NOT NULL DEFAULT '';
CREATE INDEX data_objects_created ON data_objects (created_at DESC);
CREATE INDEX annotations_type ON annotations (annotation_type, object_id);
