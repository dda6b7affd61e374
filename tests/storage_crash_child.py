"""Helper for tests/test_storage_crash.py (not a test module).

Appends to a SegmentedLog and fsyncs in a loop, printing each sequence number
once its write has returned (so it is durable), until killed.

    python tests/storage_crash_child.py BASE_DIR FIRST_SEQ
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multiraft.raft.types import Entry, HardState  # noqa: E402
from storage import FileStorageOptions, GroupWrite, SegmentedLog  # noqa: E402

GROUPS = 8


def main() -> None:
    base_dir, seq = sys.argv[1], int(sys.argv[2])
    log = SegmentedLog(FileStorageOptions(base_dir=base_dir, max_segment_size=32 * 1024, min_free_disk_space=0))
    out = sys.stdout
    while True:
        g = seq % GROUPS
        index = log.last_index(g) + 1
        data = b"seq=%d;" % seq + bytes(range(seq % 200))
        log.write([GroupWrite(g, entries=[Entry(1, index, 0, data)], hard_state=HardState(1, None, seq))])
        out.write(f"{seq}\n")
        out.flush()
        seq += 1


if __name__ == "__main__":
    main()
