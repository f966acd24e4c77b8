"""Everything one connection needs, passed in whole (as aioquic's ``QuicConfiguration``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .chap import DEFAULT_CHAP_ALGORITHMS, ChapAlgorithm, ChapCredentials

# open-iscsi's defaults (iscsid.conf), which the target then negotiates down.
DEFAULT_OPERATIONAL: Mapping[str, str] = MappingProxyType(
    {
        "HeaderDigest": "None",
        "DataDigest": "None",
        "MaxRecvDataSegmentLength": "262144",
        "MaxBurstLength": "16776192",
        "FirstBurstLength": "262144",
        "ImmediateData": "Yes",
        "InitialR2T": "No",
        "MaxConnections": "1",
        "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "0",
        "MaxOutstandingR2T": "1",
        "ErrorRecoveryLevel": "0",
        "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes",
    }
)

# Keys that make no sense in a Discovery session (RFC 7143 section 13, "Discovery" notes).
DISCOVERY_OPERATIONAL: Mapping[str, str] = MappingProxyType(
    {
        "HeaderDigest": "None",
        "DataDigest": "None",
        "MaxRecvDataSegmentLength": "262144",
        "DefaultTime2Wait": "0",
        "DefaultTime2Retain": "0",
    }
)


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Settings of one iSCSI connection and the session it leads.

    ``target_name`` None means a Discovery session. ``isid`` is chosen by the caller and kept
    across reconnects (session reinstatement, RFC 7143 section 6.3.5); ``tsih`` is 0 for a new
    session. ``operational`` holds our offers in RFC key names; missing keys take
    :data:`DEFAULT_OPERATIONAL`. Timers are in seconds; 0 disables NOP-Out pings.
    """

    initiator_name: str
    target_name: str | None = None
    isid: int = 0x80_00_00_00_00_00
    tsih: int = 0
    cid: int = 0
    initiator_alias: str | None = None
    chap: ChapCredentials | None = None
    chap_algorithms: tuple[ChapAlgorithm, ...] = DEFAULT_CHAP_ALGORITHMS
    operational: Mapping[str, str] = field(default_factory=dict)
    initial_cmd_sn: int = 1
    noop_out_interval: float = 5.0
    noop_out_timeout: float = 5.0

    @property
    def session_type(self) -> str:
        return "Normal" if self.target_name is not None else "Discovery"

    def proposals(self) -> dict[str, str]:
        """Our operational offers, defaults first, overridden by ``operational``."""
        base = DEFAULT_OPERATIONAL if self.target_name is not None else DISCOVERY_OPERATIONAL
        return {**base, **self.operational}
