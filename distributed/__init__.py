"""Purges across machines: a TaskFlow jobboard (Redis) of one job per VM, run by conductors."""
