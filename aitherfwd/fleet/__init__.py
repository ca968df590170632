"""The fleet's pure core (layer L1): its settings and the decisions hosts share.

`settings` reads the `[fleet]` table of the daemon config; `messages` encodes, decodes and
judges the decisions (blocks, unblocks) that travel over the bus. No I/O here: the NATS
adapter is `aitherfwd/adapters/natsbus.py`, the service `aitherfwd/daemon/fleet.py`.
"""
