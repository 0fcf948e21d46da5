"""Image generation: the engine (``generation.engine``: slots, requests, one request's images made and kept)
and its dispatch loop (``generation.dispatch``: when a request may be paid for), one for the CLI and the flow.
Import from the modules; this package imports nothing."""
