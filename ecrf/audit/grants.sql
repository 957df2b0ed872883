-- Once, as a superuser: the owner that runs the migrations, the role the application runs as.
CREATE ROLE ecrf_owner LOGIN PASSWORD 'change-me-owner';
CREATE ROLE ecrf_app LOGIN PASSWORD 'change-me-app';
CREATE DATABASE ecrf OWNER ecrf_owner;

-- In database ecrf, as ecrf_owner, after each `ecrf db upgrade` (it is safe to run again).
REVOKE ALL ON DATABASE ecrf FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE ecrf TO ecrf_app;
GRANT USAGE ON SCHEMA public TO ecrf_app;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM ecrf_app;
GRANT SELECT, INSERT ON audit_trail TO ecrf_app;
GRANT SELECT, INSERT, UPDATE ON audit_value, audit_chain_head TO ecrf_app;
GRANT SELECT, INSERT, UPDATE ON "user", "grant", password_history, user_session,
      site, subject_counter, subject, form_instance, item_value, submission,
      study_definition, screening_entry, data_query, item_verification, sdv_plan,
      delegation_entry, closure_state, export_job, api_token, sdv_count, summary_state
      TO ecrf_app;
GRANT SELECT, INSERT ON signature, query_message, audit_review TO ecrf_app;
-- The job queue of web exports (Procrastinate; operational, not clinical): a worker removes
-- its own row when it stops.
GRANT SELECT, INSERT, UPDATE ON procrastinate_jobs, procrastinate_events,
      procrastinate_periodic_defers TO ecrf_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON procrastinate_workers TO ecrf_app;
-- The schema revision, read by `ecrf validate install`.
GRANT SELECT ON alembic_version TO ecrf_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO ecrf_app;
