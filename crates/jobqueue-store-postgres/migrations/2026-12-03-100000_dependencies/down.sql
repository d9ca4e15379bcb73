DROP TABLE job_dependencies;
