"""The run directory: ``output_dir``'s checkpoint paths, ``log.txt`` (one JSON record per line),
``config.yaml``, and the clean-up of writes a kill left unfinished. Mixed into ``Trainer``
(it reads ``self.args`` and ``self.dist``)."""
from __future__ import annotations

import glob
import json
import os
import re

from ..utils.checkpoint import CheckpointError

_TMP_RE = re.compile(r"^(checkpoint\d*\.pth|config\.yaml)\.[A-Za-z0-9_]+\.tmp$")


class RunDirectory:
    def checkpoint_path(self, name: str = "checkpoint.pth") -> str:
        return os.path.join(self.args.output_dir, name)

    def clean_orphan_temp_files(self) -> None:
        """Temp files of writes killed before their rename (``checkpoint*.pth.XXXX.tmp``)."""
        for path in glob.glob(os.path.join(glob.escape(self.args.output_dir), "*.tmp")):
            if _TMP_RE.match(os.path.basename(path)):
                try:
                    os.unlink(path)
                    print(f"Removed an unfinished write: {path}")
                except OSError:
                    pass

    def append_log(self, record: dict) -> None:
        if self.dist.is_main:
            try:
                with open(os.path.join(self.args.output_dir, "log.txt"), "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise CheckpointError(f"cannot write {self.args.output_dir}/log.txt: {e}") from e

    def logged_epochs(self) -> set[int]:
        path = os.path.join(self.args.output_dir, "log.txt")
        epochs: set[int] = set()
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:  # a line cut by a kill
                        continue
                    if isinstance(rec, dict) and "epoch" in rec and "resume_changes" not in rec:
                        epochs.add(int(rec["epoch"]))
        return epochs

    def write_config(self) -> None:
        if self.dist.is_main:
            from ..config import save_config
            try:
                save_config(self.args, os.path.join(self.args.output_dir, "config.yaml"))
            except OSError as e:
                raise CheckpointError(f"cannot write {self.args.output_dir}/config.yaml: {e}") from e

    # ------------------------------------------------------------------ checkpoints
