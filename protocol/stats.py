"""Counters of one connection, as `iscsiadm -m session -s` shows them (its "iSCSI SNMP"
block): PDUs by opcode in each direction, data octets, and errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .pdu import Opcode

# iscsiadm's counter names for each opcode, so that scripts reading `-s` keep working.
SENT_NAMES = {
    Opcode.NOP_OUT: "noptx_pdus",
    Opcode.SCSI_COMMAND: "scsicmd_pdus",
    Opcode.TASK_MANAGEMENT_REQUEST: "tmfcmd_pdus",
    Opcode.LOGIN_REQUEST: "login_pdus",
    Opcode.TEXT_REQUEST: "text_pdus",
    Opcode.DATA_OUT: "dataout_pdus",
    Opcode.LOGOUT_REQUEST: "logout_pdus",
    Opcode.SNACK_REQUEST: "snack_pdus",
}
RECEIVED_NAMES = {
    Opcode.NOP_IN: "noprx_pdus",
    Opcode.SCSI_RESPONSE: "scsirsp_pdus",
    Opcode.TASK_MANAGEMENT_RESPONSE: "tmfrsp_pdus",
    Opcode.TEXT_RESPONSE: "textrsp_pdus",
    Opcode.DATA_IN: "datain_pdus",
    Opcode.LOGOUT_RESPONSE: "logoutrsp_pdus",
    Opcode.R2T: "r2t_pdus",
    Opcode.ASYNC_MESSAGE: "async_pdus",
    Opcode.REJECT: "rjt_pdus",
}


@dataclass(slots=True)
class ConnectionStats:
    """Plain counters; the connection adds to them as PDUs go by."""

    sent: Counter[int] = field(default_factory=Counter)
    received: Counter[int] = field(default_factory=Counter)
    txdata_octets: int = 0  # SCSI data written (immediate data and Data-Out)
    rxdata_octets: int = 0  # SCSI data read (Data-In)
    digest_err: int = 0
    timeout_err: int = 0
    last_nop_rtt: float | None = None

    def add(self, other: ConnectionStats) -> None:
        """Fold another connection's counters in (a session outlives its connections)."""
        self.sent.update(other.sent)
        self.received.update(other.received)
        self.txdata_octets += other.txdata_octets
        self.rxdata_octets += other.rxdata_octets
        self.digest_err += other.digest_err
        self.timeout_err += other.timeout_err
        if other.last_nop_rtt is not None:
            self.last_nop_rtt = other.last_nop_rtt

    def snapshot(self) -> dict[str, int | float | None]:
        """The counters under iscsiadm's names (plus the last NOP-Out round trip)."""
        out: dict[str, int | float | None] = {
            "txdata_octets": self.txdata_octets,
            "rxdata_octets": self.rxdata_octets,
        }
        out.update({name: self.sent[op] for op, name in SENT_NAMES.items()})
        out.update({name: self.received[op] for op, name in RECEIVED_NAMES.items()})
        out.update(digest_err=self.digest_err, timeout_err=self.timeout_err)
        out["nop_rtt_ms"] = (
            round(self.last_nop_rtt * 1000, 3) if self.last_nop_rtt is not None else None
        )
        return out
