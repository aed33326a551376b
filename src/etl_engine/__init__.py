"""ETL Narrative Engine: Health Connect Avro exports in, clinical narratives out."""

__version__ = "0.2.0"
