"""What the Prefect tasks and flows share at run time: the shared limits (seats, in-flight leases, rate slots),
Prefect internals in one place, and the task policies (retry, caching, artifacts). See README.md."""
