"""Confinement of a domain process: the pure plan of its jail (:mod:`pyhv.jail.plan`).

The privileged steps that carry a plan out are not written yet; nothing here
touches the host.
"""
