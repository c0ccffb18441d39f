"""Runtime engines around the domain: charging (offline rating), outbox relay."""
