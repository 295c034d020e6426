"""Worker processes behind one control plane (`workers` > 1).

The supervisor (`pool`) binds every listening socket and the API once, starts the relay
workers (`worker`), each a whole `Sidecar` without an API that inherits the listening sockets,
restarts a worker that dies, and serves the API and /metrics through `WorkersControl`
(`control`), which asks every worker over its channel (`channel`) and merges the answers
(`merge`).
"""
