"""The functional core: event kinds, rows, the value codec, state encoders, snapshots, schema, and the fold."""
