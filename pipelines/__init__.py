"""Data lifecycle steps as plain functions: each runs and is tested without Airflow."""
