"""Local mode: real PostgreSQL and NATS servers on loopback, and the local runtime."""
