"""The Dagster layer: assets, checks, resources, schedules and sensors, each a thin call into the domain code."""
