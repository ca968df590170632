"""Dynamic state as pure state machines: blocks now; reputation and sandbox grants later."""
