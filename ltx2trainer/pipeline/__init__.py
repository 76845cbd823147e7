"""The job pipeline: fetch → prepare → encode → train → validate → publish. Never imports the API or Celery."""
