-- scope: projection
-- Projection schema, version 14: command_outcomes indexes by assessment only its rejections.
--
-- The one query that looks outcomes up by assessment asks for refused commands (fetch_rejections:
-- NOT accepted AND assessment_id = $2). Every accepted command's outcome was still entered in an
-- index of all outcomes by assessment: one more b-tree insertion per command, about 2-3.5 µs of
-- PostgreSQL CPU of the ~9-10 µs its outcome row costs (COPY of 200,000 rows onto 300,000, full
-- index against partial, alternating twice). The accepted commands of an assessment are its
-- history (assessment_events, by its primary key), which is where to look for them.
--
-- Applied to a live projection, CREATE INDEX reads the table once and blocks writes to it while
-- it runs (the services apply migrations as they start, before they fold).
DROP INDEX projection.command_outcomes_assessment_idx;
CREATE INDEX command_outcomes_rejections_idx ON projection.command_outcomes (assessment_id) WHERE NOT accepted;
