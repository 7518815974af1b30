"""The HTTP edge: schemas, authentication, rate limits and problem responses."""
