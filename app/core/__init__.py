"""Pure rules and vocabulary: errors, validation, permissions, channel names, JSON-safe values.

Rule: imports nothing from app and no I/O library."""
