"""Sepulki Hammer: the GraphQL backend of a robot fleet platform."""
