"""The `tollgate` command: composition root wiring core, api and operator together."""
