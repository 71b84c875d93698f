"""The Delta lake: partition-scoped reads and writes, pandera schemas, raw -> bronze cleaning and quarantine."""
