"""Development tooling for the ETL Narrative Engine (not shipped in the worker image)."""
