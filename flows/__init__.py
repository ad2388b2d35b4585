"""Orchestration: the Prefect flow, its scheduler, tasks, artifacts, alerts and deployments."""
