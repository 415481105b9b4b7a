"""The Triton model repository: the configs and model folders of both targets (writer), the
python model and CPU runners copied into every cpu model, the DALI JPEG ensembles, the visual
report, and the staging directory a build is swapped in from. The GPU host's engine builder imports
writer and owner: nothing here imports torch at import time."""
