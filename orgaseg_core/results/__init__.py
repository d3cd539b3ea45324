"""What a lab reads from an analysis: the experiment's design attached to every image
(:mod:`.design`) and per-condition results with their uncertainty (:mod:`.statistics`,
:func:`.conditions.conditions_table`). numpy, scipy and pandas only."""
