"""Shared domain layer: settings, errors, and the dataclasses every process exchanges.

Nothing here imports grpc, redis or torch, so the server, the workers and the CLI can all use it.
"""
