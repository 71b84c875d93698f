"""The cluster profile's own servers on one machine (docs/scale-out.md): Postgres (the Debian package, a database
cluster in a project folder) and Redis, started and stopped for `make cluster` and the tests, and a preflight that
turns an unreachable one into one line naming its setting and host. Plain Python: no dagster, no mlflow."""
