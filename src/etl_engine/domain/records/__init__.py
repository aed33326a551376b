"""One module per Health Connect record type: its statistics, value checks, narrative and,
last, its ``SPEC`` (``spec.RecordTypeSpec``), which ``domain/registry.py`` discovers."""
