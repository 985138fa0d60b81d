"""Evaluation: reports on the cascade, the LLM stage, PII redaction, the rules and shadow runs."""
