"""Where the exchange keeps a job's inputs and results in its blob store.

Every upload gets a key of its own (a random part beside the instance or the result name), so
that two uploads of one instance never write the same blob: the row the job keeps always names
the bytes it describes, whichever upload wins, and the blob a later upload replaced is deleted
after that upload commits. All of a job's blobs sit under one folder per kind, which retention
empties whole: a blob left behind by a crash between storing and recording goes with its job.
"""

from __future__ import annotations

import secrets


def input_folder(job_id: str) -> str:
    return f"inputs/{job_id}/"


def result_folder(job_id: str) -> str:
    return f"results/{job_id}/"


def input_key(job_id: str, sop_instance_uid: str) -> str:
    """A new key for one upload of an input instance."""
    return f"{input_folder(job_id)}{sop_instance_uid}.{secrets.token_hex(8)}.dcm"


def result_key(job_id: str, name: str) -> str:
    """A new key for one upload of a result."""
    return f"{result_folder(job_id)}{secrets.token_hex(8)}.{name}"
