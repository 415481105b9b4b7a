"""Measurements on a finished build: images/s of every variant (make bench), the attribution
graph's cost, and the faithfulness (deletion) benchmark of the explanation maps."""
