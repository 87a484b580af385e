"""Toy tasks for the embedded model: seeded generators, worked solutions and checkers."""
