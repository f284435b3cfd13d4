"""A sweep's saved Ray Tune state, made safe to restore (``hardseg sweep --resume``).

Ray Tune 2.60 saves its controller's pending per-trial decisions with the experiment state
(``runner_data`` in ``experiment_state-*.json``: ``_cached_trial_decisions``, ``_queued_trial_decisions``)
and ``Tuner.restore`` loads them back. A trial that stops while Tune waits for its checkpoint (its
process dies during a save, or Ctrl-C stops it then) leaves a cached ``STOP`` there; Tune only clears it
when it retries the trial in the same session. Restored, the stale ``STOP`` ends the resumed trial at its
first checkpoint: a ``--retry-failed`` rerun or a resumed trial stops after one epoch instead of finishing.
A decision belongs to a trial's actor of the session that made it; a restored trial starts on a new actor
from its checkpoint, so :func:`drop_pending_decisions` removes them before the restore.
"""

from __future__ import annotations

import json
import re

import pyarrow.fs

from hardseg.platform.storage import storage_fs

STATE_FILE = re.compile(r"experiment_state-.*\.json")
PENDING_DECISIONS = ("_cached_trial_decisions", "_queued_trial_decisions")


def drop_pending_decisions(folder: str) -> None:
    """Empty the pending trial decisions in every experiment-state file of the Tune experiment ``folder``
    (a local path or storage URI); a file without any is left as it is."""
    fs, path = storage_fs(folder)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(path)):
        if info.type != pyarrow.fs.FileType.File or not STATE_FILE.fullmatch(info.base_name):
            continue
        with fs.open_input_stream(info.path) as f:
            state = json.loads(f.read().decode())
        runner = state.get("runner_data", {})
        if not any(runner.get(k) for k in PENDING_DECISIONS):
            continue
        runner.update({k: {} for k in PENDING_DECISIONS})
        with fs.open_output_stream(info.path) as f:
            f.write(json.dumps(state).encode())
