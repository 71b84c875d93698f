"""Monitoring: feature drift, regime shift and live prediction quality, as plain functions the Dagster jobs call."""
