"""The long-running daemon (layer L3): composition root, kernel writer, reload, routes."""
