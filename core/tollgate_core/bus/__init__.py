"""NATS JetStream transport: connection, streams and publishing with Nats-Msg-Id."""
