"""Device models.  Devices see registers and memory, never files or sockets:
their outputs and inputs are small callables and backends the builder wires."""
