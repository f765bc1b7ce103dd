-- First start of the compose stack's PostgreSQL: one database per tasklab
-- domain service (each service owns its tables and never reads another's).
-- Run by the postgres image from /docker-entrypoint-initdb.d as POSTGRES_USER.
CREATE DATABASE tasklab_tasks;
CREATE DATABASE tasklab_projects;
CREATE DATABASE tasklab_queues;
CREATE DATABASE tasklab_artifacts;
CREATE DATABASE tasklab_metrics;
