"""The engines step runs as root in the TensorRT container (compose `engines`), writing into the
user's ./model_repository. Root-owned files there would make the user's next `make repo` unable
to delete the old tree and `make clean-repo` fail, so what root wrote goes to the owner of the
repository's model.json: the user whose `make repo` made it. No configuration needed (compose
`user:` would need the host's uid in the environment, and a passwd entry in the image).
"""

from __future__ import annotations

import os
from pathlib import Path


def give_back(repository: Path) -> int:
    """As root, every entry under `repository` that root owns goes to model.json's owner (uid and
    gid); returns how many. Does nothing when not root or when root owns model.json."""
    marker = repository / "model.json"
    if os.geteuid() != 0 or not marker.is_file():
        return 0
    owner = marker.stat()
    if owner.st_uid == 0:
        return 0
    changed = 0
    for top, dirs, files in os.walk(repository):
        for path in [top, *(os.path.join(top, name) for name in (*dirs, *files))]:
            if os.lstat(path).st_uid == 0:
                os.lchown(path, owner.st_uid, owner.st_gid)
                changed += 1
    return changed
