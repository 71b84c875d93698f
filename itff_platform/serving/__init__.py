"""The BentoML service over the champions: request schemas, online features, auth and rate limiting."""
