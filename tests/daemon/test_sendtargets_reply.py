"""The daemon's reading of a SendTargets reply, entry by entry (read_send_targets with the
node database's name rules): the codec's rules for a good reply, and a bad entry costing
only itself."""

from __future__ import annotations

from pyiscsid.daemon.nodedb import target_name_problem
from pyiscsid.protocol.discovery import Portal, SkippedEntry, read_send_targets

A, B = "iqn.2026-11.org.example:a", "iqn.2026-11.org.example:b"


def test_a_good_reply_reads_as_the_codec_reads_it() -> None:
    """Portals in order, a repeated name gathers its portals once each, a target with no
    TargetAddress is reached where we asked, other keys (TargetAlias) are ignored."""
    targets, skipped = read_send_targets(
        [
            ("TargetName", A),
            ("TargetAlias", "disk a"),
            ("TargetAddress", "10.0.0.1:3260,1"),
            ("TargetName", B),
            ("TargetName", A),
            ("TargetAddress", "[fd00::1]:3261,2"),
            ("TargetAddress", "10.0.0.1:3260,1"),
        ],
        target_name_problem,
    )
    assert skipped == []
    assert [(t.name, t.number, [p for p, _ in t.portals]) for t in targets] == [
        (A, 1, [Portal("10.0.0.1", 3260, 1), Portal("fd00::1", 3261, 2)]),
        (B, 2, []),  # the caller uses ASKED
    ]


def test_each_bad_entry_is_skipped_alone() -> None:
    targets, skipped = read_send_targets(
        [
            ("TargetName", ""),
            ("TargetAddress", "10.0.0.9:3260,1"),  # belongs to the empty name: dropped with it
            ("TargetName", A),
            ("TargetAddress", "10.0.0.1:99999,1"),
            ("TargetAddress", "10.0.0.1:3260,1"),
        ],
        target_name_problem,
    )
    assert [(t.name, [(str(p), n) for p, n in t.portals]) for t in targets] == [
        (A, [("10.0.0.1:3260,1", 2)])
    ]
    assert skipped == [
        SkippedEntry("TargetName", 1, None, "empty"),
        SkippedEntry("TargetAddress", 1, A, "not ADDRESS[:PORT][,TPGT] (RFC 7143 section 13.8)"),
    ]
