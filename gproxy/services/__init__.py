"""Listeners that are not per-connection proxy front ends (metrics, admin, UDP forwarding).
Imports core/ and codec/, never server/ or ops/.
"""
