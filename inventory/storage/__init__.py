"""Where runs live: the schema (declared once), flattening, fingerprints, the DuckDB
store and its views, the Parquet lake, retention and rebuilding. Knows nothing of AWS."""
