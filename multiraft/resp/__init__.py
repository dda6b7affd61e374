"""A Redis protocol (RESP2) front-end for the cluster (docs/resp.md).

`python -m multiraft.resp --listen HOST:PORT --cluster H:P[,...]` runs it;
`multiraft node --redis HOST:PORT` runs one beside each node. Modules:
`protocol` (RESP2 parsing and serialization, pure), `commands` (the command
table), `scan` (KEYS/SCAN: glob patterns, cursors), `server` (connections,
pipelining), `__main__` (the process).
"""
