"""Embedded development mode: a bundled Redis, the console provider and its call inbox."""
