#!/usr/bin/env python
"""Dump a worker's log directory for humans: segments, records, per-group ranges.

    python tools/logdump.py DATA_DIR [--records] [--group G] [--limit N]

DATA_DIR is a FileStorage base_dir (holding logs/) or the logs/ directory
itself. Nothing is modified: the log is opened read-only, without its lock.
Exit status 1 if the log is corrupt (it would refuse to start).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import CorruptLogError, FileStorageOptions, SegmentedLog  # noqa: E402
from storage.records import (  # noqa: E402
    RecordType,
    check_segment_header,
    describe_record,
    parse_segment_name,
    scan_records,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    p.add_argument("--records", action="store_true", help="print every record")
    p.add_argument("--group", type=int, default=None, help="only this group's records")
    p.add_argument("--limit", type=int, default=None, help="print at most N records per segment")
    args = p.parse_args(argv)
    base = args.dir
    if (base / "logs").is_dir():
        log_dir = base / "logs"
    elif base.name == "logs":
        log_dir, base = base, base.parent
    else:
        print(f"no log directory in {base}", file=sys.stderr)
        return 2

    segments = sorted(
        (parse_segment_name(f.name), f) for f in log_dir.iterdir() if parse_segment_name(f.name) is not None
    )
    print(f"log {log_dir}: {len(segments)} segment(s)")
    problems = 0
    for lsn, path in segments:
        data = path.read_bytes()
        hdr = check_segment_header(data)
        counts: collections.Counter = collections.Counter()
        print(
            f"\n{path.name}: base LSN {lsn}, {len(data)} bytes" + ("" if hdr == lsn else f"  BAD HEADER (says {hdr})")
        )
        shown = 0
        for off, rtype, group, durable, body in scan_records(data):
            if rtype is None:
                print(f"  !! offset {off}: {body} ({len(data) - off} bytes from here to the end)")
                problems += 1
                break
            counts[RecordType(rtype).name if rtype in RecordType._value2member_map_ else str(rtype)] += 1
            if args.records and (args.group is None or args.group == group):
                if args.limit is None or shown < args.limit:
                    where = f"  @{off:>10} lsn {lsn + off:>12} group {group:>6} durable {durable:>12}"
                    print(f"{where}  {describe_record(rtype, body)}")
                    shown += 1
        print("  records: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))

    print()
    try:
        log = SegmentedLog(FileStorageOptions(base_dir=base), read_only=True)
    except CorruptLogError as exc:
        print(f"RECOVERY WOULD REFUSE TO START: {exc}")
        return 1
    try:
        if log.recovery.get("torn_tail"):
            t = log.recovery["torn_tail"]
            print(f"recovery would cut a torn tail: {t['segment']} at offset {t['offset']} ({t['reason']})")
        groups = log.groups() if args.group is None else [args.group]
        print(f"{len(log.groups())} group(s)")
        for g in groups:
            first, last = log.first_index(g), log.last_index(g)
            bi, bt = log.compacted_to(g)
            n = max(0, last - first + 1)
            rng = f"entries {first}..{last} ({n})" if n else "no entries"
            cs = log.conf_state(g)
            conf = None if cs is None else cs.to_plain()
            print(
                f"group {g}: {rng}, base (index {bi}, term {bt}), last term {log.last_term(g)}, "
                f"hard state {log.hard_state(g)}, conf {conf}"
            )
    finally:
        log.close()
    return 1 if problems and not log.recovery.get("torn_tail") else 0


if __name__ == "__main__":
    sys.exit(main())
