"""The collapse lab: run a matrix of (preset + overrides) runs, measure collapse the same way for every
method, judge each run (healthy / complete / dimensional collapse) and write a report with figures.

Sits above ``dinolite.train`` (like ``launch/``); ``eval`` and ``export`` never import it.
Entry point: ``python launch/lab.py --matrix <name or .yaml>`` (:mod:`dinolite.commands.lab`).
"""
