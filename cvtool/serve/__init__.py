"""`cvtool serve`: the Python API's task objects kept warm behind an HTTP API, and the thin client.

- app.py: the FastAPI application (one endpoint per task; records exactly as the CLI prints them);
- registry.py: loaded task objects, an LRU under a memory budget, one load per model at a time;
- security.py: the bearer token, server-side paths confined to --allow-paths, request-size limit;
- client.py: the CLI's thin client (standard library HTTP, no torch), used when CVTOOL_SERVER is set;
- settings.py: the server's settings and their defaults (the CLI's option defaults).

Only client.py and settings.py may be imported by the CLI outside `cvtool serve`; the rest needs the `serve` extra.
"""
