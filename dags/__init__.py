"""Airflow DAG files: they declare tasks only; nothing imports this package."""
