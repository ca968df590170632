"""Country and list prefix sets (layer L1, pure): see ranges.py."""
