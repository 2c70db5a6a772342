"""Data layer: the contract, ingest, validation, the DuckDB warehouse, transforms, the event log, the datasets."""
