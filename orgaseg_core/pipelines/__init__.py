"""Pipelines that compose the steps: ``analyze`` (segment, extract, classify, QuPath files and
tables) and ``example`` (the whole story on generated data), with the child processes that keep
TensorFlow and torch apart (:mod:`.processes`).

May import every other subpackage; nothing imports it but the top-level interfaces.
"""
