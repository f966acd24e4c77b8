"""The key table and the initiator's side of a negotiation (RFC 7143 sections 6.2, 6.3, 13)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.protocol.errors import (
    InitiatorProtocolError,
    NegotiationError,
    TargetProtocolError,
)
from pyiscsid.protocol.keys import (
    KEYS,
    InvalidValue,
    KeyScope,
    KeySpec,
    KeyType,
    KeyUse,
    Phase,
    ResultRule,
    Sender,
    is_private_key,
    parse_number,
)
from pyiscsid.protocol.negotiation import (
    InvalidProposal,
    Negotiator,
    SessionParameters,
    TargetNegotiationError,
)

INITIATOR = "iqn.1993-08.org.debian:01:pyiscsid"
TARGET = "iqn.2001-04.com.example:disk1"

OPERATIONAL = {
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
NORMAL = {
    "InitiatorName": INITIATOR,
    "SessionType": "Normal",
    "TargetName": TARGET,
    **OPERATIONAL,
}


def negotiator(**changes: str) -> Negotiator:
    """A normal-session negotiator whose offers are already sent."""
    n = Negotiator({**NORMAL, **changes})
    n.offers()
    return n


# --- the key table ------------------------------------------------------------------------------


RFC_KEYS = {
    "HeaderDigest", "DataDigest", "MaxConnections", "SendTargets", "TargetName",
    "InitiatorName", "TargetAlias", "InitiatorAlias", "TargetAddress", "TargetPortalGroupTag",
    "InitialR2T", "ImmediateData", "MaxRecvDataSegmentLength", "MaxBurstLength",
    "FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
    "DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel", "SessionType",
    "TaskReporting", "iSCSIProtocolLevel", "AuthMethod", "OFMarker", "IFMarker", "OFMarkInt",
    "IFMarkInt",
}  # fmt: skip


def test_table_covers_every_rfc_key() -> None:
    assert set(KEYS) >= RFC_KEYS
    for name, spec in KEYS.items():
        assert spec.name == name


@pytest.mark.parametrize(
    ("name", "rule", "default", "minimum", "maximum"),
    [
        ("InitialR2T", ResultRule.OR, "Yes", None, None),
        ("ImmediateData", ResultRule.AND, "Yes", None, None),
        ("MaxRecvDataSegmentLength", ResultRule.DECLARATIVE, "8192", 512, 2**24 - 1),
        ("MaxBurstLength", ResultRule.MIN, "262144", 512, 2**24 - 1),
        ("FirstBurstLength", ResultRule.MIN, "65536", 512, 2**24 - 1),
        ("DefaultTime2Wait", ResultRule.MAX, "2", 0, 3600),
        ("DefaultTime2Retain", ResultRule.MIN, "20", 0, 3600),
        ("MaxOutstandingR2T", ResultRule.MIN, "1", 1, 65535),
        ("MaxConnections", ResultRule.MIN, "1", 1, 65535),
        ("DataPDUInOrder", ResultRule.OR, "Yes", None, None),
        ("DataSequenceInOrder", ResultRule.OR, "Yes", None, None),
        ("ErrorRecoveryLevel", ResultRule.MIN, "0", 0, 2),
        ("HeaderDigest", ResultRule.FIRST_MATCH, "None", None, None),
        ("DataDigest", ResultRule.FIRST_MATCH, "None", None, None),
        ("TaskReporting", ResultRule.FIRST_MATCH, "RFC3720", None, None),
        ("SessionType", ResultRule.DECLARATIVE, "Normal", None, None),
    ],
)
def test_table_values(
    name: str, rule: ResultRule, default: str, minimum: int | None, maximum: int | None
) -> None:
    spec = KEYS[name]
    assert (spec.rule, spec.default, spec.minimum, spec.maximum) == (
        rule,
        default,
        minimum,
        maximum,
    )


def test_table_scopes_senders_and_uses() -> None:
    assert KEYS["HeaderDigest"].scope is KeyScope.CONNECTION
    assert KEYS["MaxRecvDataSegmentLength"].scope is KeyScope.CONNECTION
    assert KEYS["MaxBurstLength"].scope is KeyScope.SESSION
    assert KEYS["InitiatorName"].sender is Sender.INITIATOR
    assert KEYS["TargetAlias"].sender is Sender.TARGET
    assert KEYS["MaxBurstLength"].sender is Sender.BOTH
    assert KEYS["MaxConnections"].use is KeyUse.LEADING_ONLY
    assert KEYS["HeaderDigest"].use is KeyUse.INITIALIZE_ONLY
    assert KEYS["SendTargets"].use is KeyUse.FULL_FEATURE_ONLY
    assert KEYS["MaxRecvDataSegmentLength"].use is KeyUse.ALL
    assert KEYS["AuthMethod"].use is KeyUse.SECURITY
    assert all(KEYS[k].obsolete for k in ("OFMarker", "IFMarker", "OFMarkInt", "IFMarkInt"))
    assert not KEYS["InitialR2T"].discovery
    assert KEYS["HeaderDigest"].discovery


def test_allowed_in() -> None:
    assert KEYS["InitiatorName"].allowed_in(Phase.SECURITY)
    assert KEYS["AuthMethod"].allowed_in(Phase.SECURITY)
    assert not KEYS["AuthMethod"].allowed_in(Phase.OPERATIONAL)
    assert not KEYS["MaxBurstLength"].allowed_in(Phase.SECURITY)
    assert not KEYS["MaxRecvDataSegmentLength"].allowed_in(Phase.SECURITY)
    assert KEYS["MaxBurstLength"].allowed_in(Phase.OPERATIONAL)
    assert not KEYS["MaxBurstLength"].allowed_in(Phase.OPERATIONAL, leading=False)
    assert KEYS["HeaderDigest"].allowed_in(Phase.OPERATIONAL, leading=False)
    assert KEYS["MaxRecvDataSegmentLength"].allowed_in(Phase.FULL_FEATURE)
    assert KEYS["SendTargets"].allowed_in(Phase.FULL_FEATURE)
    assert not KEYS["SendTargets"].allowed_in(Phase.OPERATIONAL)
    assert not KEYS["HeaderDigest"].allowed_in(Phase.FULL_FEATURE)


@pytest.mark.parametrize(
    ("name", "value", "parsed"),
    [
        ("InitialR2T", "Yes", True),
        ("ImmediateData", "No", False),
        ("MaxBurstLength", "65536", 65536),
        ("MaxBurstLength", "0x10000", 65536),
        ("TargetPortalGroupTag", "0x1", 1),
        ("HeaderDigest", "CRC32C,None", ("CRC32C", "None")),
        ("SessionType", "Discovery", "Discovery"),
        ("InitiatorName", INITIATOR, INITIATOR),
        ("CHAP_C", "0x0a0b", b"\x0a\x0b"),
    ],
)
def test_parse(name: str, value: str, parsed: object) -> None:
    assert KEYS[name].parse(value) == parsed


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("InitialR2T", "yes", "expected Yes or No"),
        ("MaxBurstLength", "511", "outside 512..16777215"),
        ("MaxBurstLength", "16777216", "outside"),
        ("MaxBurstLength", "-1", "expected a number"),
        ("MaxBurstLength", "1_000", "expected a number"),
        ("MaxBurstLength", "١٢٣", "expected a number"),
        ("MaxBurstLength", "0x", "expected a number"),
        ("ErrorRecoveryLevel", "3", "outside 0..2"),
        ("HeaderDigest", "CRC32C,MD5", "unknown value 'MD5'"),
        ("HeaderDigest", "None,,CRC32C", "empty item"),
        ("HeaderDigest", "None,None", "repeated item"),
        ("SessionType", "Weird", "expected one of Discovery, Normal"),
        ("InitiatorName", "not a name", "not an iSCSI name"),
        ("InitiatorName", "iqn." + "x" * 220, "longer than 223 bytes"),
        ("TargetAlias", "a" * 256, "longer than 255 bytes"),
        ("MaxBurstLength", "Reject", "Reject is not a value"),
        ("CHAP_C", "0xzz", "malformed binary value"),
    ],
)
def test_parse_errors_name_the_key(name: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason) as info:
        KEYS[name].parse(value)
    assert info.value.key == name
    assert str(info.value).startswith(f"{name}: ")
    assert isinstance(info.value, NegotiationError)


def test_validate_canonical_form() -> None:
    assert KEYS["FirstBurstLength"].validate("0x10000") == "65536"
    assert KEYS["DataPDUInOrder"].validate("No") == "No"
    spec: KeySpec = KEYS["TaskReporting"]
    assert spec.type is KeyType.LIST
    assert spec.validate("ResponseFence,RFC3720") == "ResponseFence,RFC3720"


def test_parse_number_and_private_keys() -> None:
    assert parse_number("0") == 0
    assert parse_number("0xff") == 255
    assert is_private_key("X-com.example.Foo")
    assert is_private_key("X#Bar")
    assert not is_private_key("MaxBurstLength")


# --- proposals ----------------------------------------------------------------------------------


def test_offers_in_table_order_once() -> None:
    n = Negotiator(NORMAL)
    offers = n.offers()
    assert [k for k, _ in offers[:3]] == ["InitiatorName", "SessionType", "TargetName"]
    assert dict(offers) == NORMAL
    assert n.offers() == []


def test_offers_by_login_stage() -> None:
    n = Negotiator({**NORMAL, "AuthMethod": "CHAP,None", "DefaultTime2Retain": "20"})
    security = n.offers(Phase.SECURITY)
    assert [k for k, _ in security] == ["InitiatorName", "SessionType", "TargetName", "AuthMethod"]
    assert n.complete is False  # AuthMethod waits for its answer
    assert n.receive([("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "1")]) == []
    assert n.complete
    operational = n.offers(Phase.OPERATIONAL)
    assert dict(operational) == {**OPERATIONAL, "DefaultTime2Retain": "20"}
    assert n.values()["AuthMethod"] == "CHAP"


def test_proposals_are_validated() -> None:
    with pytest.raises(InvalidProposal, match="MaxBurstLength: 100 is outside") as info:
        Negotiator({**NORMAL, "MaxBurstLength": "100"})
    assert info.value.key == "MaxBurstLength"
    assert isinstance(info.value, InitiatorProtocolError)


@pytest.mark.parametrize(
    ("proposals", "key", "fault"),
    [
        ({"Frobnicate": "1"}, "Frobnicate", "not a key"),
        ({"X-com.example.Foo": "1"}, "X-com.example.Foo", "not a key"),
        ({"OFMarker": "No"}, "OFMarker", "obsoleted"),
        ({"CHAP_A": "5"}, "CHAP_A", "CHAP"),
        ({"TargetAlias": "disk"}, "TargetAlias", "only a target"),
        ({"InitiatorName": "bob"}, "InitiatorName", "not an iSCSI name"),
        ({"HeaderDigest": "MD5"}, "HeaderDigest", "unknown value"),
        ({"InitialR2T": "maybe"}, "InitialR2T", "Yes or No"),
        (
            {"FirstBurstLength": "65536", "MaxBurstLength": "4096"},
            "FirstBurstLength",
            "exceeds MaxBurstLength",
        ),
    ],
)
def test_bad_proposals(proposals: dict[str, str], key: str, fault: str) -> None:
    with pytest.raises(InvalidProposal, match=fault) as info:
        Negotiator(proposals)
    assert info.value.key == key


def test_session_type_argument() -> None:
    n = Negotiator({"HeaderDigest": "None"}, session_type="Discovery")
    assert n.discovery
    with pytest.raises(InvalidProposal, match="SessionType"):
        Negotiator({"SessionType": "Normal"}, session_type="Discovery")
    with pytest.raises(InvalidProposal, match="SessionType"):
        Negotiator({}, session_type="Weird")


def test_first_burst_length_dropped_when_irrelevant_by_our_offers() -> None:
    n = Negotiator({**NORMAL, "InitialR2T": "Yes", "ImmediateData": "No"})
    offered = dict(n.offers())
    assert "FirstBurstLength" not in offered
    assert n.dropped == {"FirstBurstLength": "262144"}


# --- known exchanges ----------------------------------------------------------------------------


def test_full_answer_from_an_rfc_target() -> None:
    """A target that answers every offer (LIO-like) and declares its own receive length."""
    n = negotiator(HeaderDigest="CRC32C,None", DataDigest="CRC32C,None")
    response = [
        ("TargetAlias", "lio-disk"),
        ("TargetPortalGroupTag", "1"),
        ("HeaderDigest", "CRC32C"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
    ]
    assert n.receive(response) == []
    assert n.complete and n.pending() == set()
    assert n.parameters() == SessionParameters(
        header_digest=True,
        data_digest=False,
        max_connections=1,
        initial_r2t=True,
        immediate_data=True,
        max_burst_length=262144,
        first_burst_length=65536,
        default_time2wait=2,
        default_time2retain=0,
        max_outstanding_r2t=1,
        data_pdu_in_order=True,
        data_sequence_in_order=True,
        error_recovery_level=0,
        initiator_max_recv_data_segment_length=262144,
        target_max_recv_data_segment_length=65536,
        target_alias="lio-disk",
        target_portal_group_tag=1,
        task_reporting="RFC3720",
    )
    assert n.declarations() == {
        "TargetAlias": "lio-disk",
        "TargetPortalGroupTag": "1",
        "MaxRecvDataSegmentLength": "65536",
    }


def test_tgt_answers_every_offer_but_never_its_receive_length() -> None:
    """What tgtd 1.0 sends back (usr/iscsi/iscsid.c text_scan_login): each offered key with
    its computed value, and no MaxRecvDataSegmentLength: we may send it 8192 bytes per PDU."""
    n = negotiator()
    response = [
        ("TargetPortalGroupTag", "1"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("ImmediateData", "Yes"),
        ("InitialR2T", "Yes"),
        ("MaxConnections", "1"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ]
    assert n.receive(response) == []
    assert n.complete
    params = n.parameters()
    assert params.target_max_recv_data_segment_length == 8192
    assert params.initiator_max_recv_data_segment_length == 262144
    assert (params.max_burst_length, params.first_burst_length) == (262144, 65536)
    assert params.initial_r2t and params.immediate_data
    assert params.default_time2retain == 0


def test_tgt_quirk_only_keys_that_differ_from_the_default() -> None:
    """A target that leaves out every key whose result is the RFC default: those results are
    the defaults, and its MaxRecvDataSegmentLength is 8192."""
    n = negotiator()
    assert n.receive([("TargetPortalGroupTag", "1"), ("DefaultTime2Retain", "0")]) == []
    assert not n.complete  # the login machine relies on the target's T bit then
    assert "MaxBurstLength" in n.pending()
    values = n.values()
    assert values["MaxBurstLength"] == "262144"
    assert values["FirstBurstLength"] == "65536"
    assert values["InitialR2T"] == "Yes"
    assert values["ImmediateData"] == "Yes"
    assert values["DefaultTime2Retain"] == "0"
    params = n.parameters()
    assert params.target_max_recv_data_segment_length == 8192
    assert params.target_portal_group_tag == 1


def test_unanswered_offer_whose_default_we_cannot_use() -> None:
    n = negotiator(HeaderDigest="CRC32C")
    n.receive([("DataDigest", "None")])
    with pytest.raises(NegotiationError, match="HeaderDigest: the target never answered"):
        n.values()


def test_unanswered_offers_that_fix_their_own_result() -> None:
    """AND with No and OR with Yes need no answer (RFC 7143 section 6.2.2)."""
    n = negotiator(
        ImmediateData="No", InitialR2T="Yes", DataPDUInOrder="Yes", DefaultTime2Retain="20"
    )
    assert not {"ImmediateData", "InitialR2T", "DataPDUInOrder"} & n.pending()
    values = n.values()
    assert values["ImmediateData"] == "No"
    assert values["InitialR2T"] == "Yes"


def test_target_offers_first() -> None:
    """The target offers keys in its first response, before our operational offers."""
    n = Negotiator({**NORMAL, "AuthMethod": "None"})
    n.offers(Phase.SECURITY)
    n.receive([("AuthMethod", "None")])
    answers = n.receive(
        [
            ("MaxBurstLength", "65536"),
            ("FirstBurstLength", "524288"),
            ("ImmediateData", "No"),
            ("InitialR2T", "No"),
            ("DefaultTime2Wait", "5"),
            ("DefaultTime2Retain", "60"),
            ("MaxOutstandingR2T", "8"),
            ("ErrorRecoveryLevel", "2"),
            ("HeaderDigest", "CRC32C,None"),
            ("TaskReporting", "FastAbort,ResponseFence"),
            ("X-com.example.Magic", "42"),
            ("X#Vendor", "1"),
            ("Frobnicate", "Yes"),
            ("IFMarker", "Yes"),
            ("OFMarkInt", "2048~8192"),
        ],
        Phase.OPERATIONAL,
    )
    assert dict(answers) == {
        "MaxBurstLength": "65536",
        "ImmediateData": "No",
        "InitialR2T": "No",
        "DefaultTime2Wait": "5",
        "DefaultTime2Retain": "0",
        "MaxOutstandingR2T": "1",
        "ErrorRecoveryLevel": "0",
        "HeaderDigest": "None",
        "TaskReporting": "Reject",
        "X-com.example.Magic": "NotUnderstood",
        "X#Vendor": "NotUnderstood",
        "Frobnicate": "NotUnderstood",
        "IFMarker": "Reject",
        "OFMarkInt": "Reject",
        "FirstBurstLength": "262144",  # min(262144, 524288), judged last
    }
    assert answers[-1][0] == "FirstBurstLength"
    # Keys we answered are not offered again; the rest still are.
    assert dict(n.offers()) == {
        "MaxRecvDataSegmentLength": "262144",
        "DataDigest": "None",
        "MaxConnections": "1",
        "DataPDUInOrder": "Yes",
        "DataSequenceInOrder": "Yes",
    }
    values = n.values()
    assert values["MaxBurstLength"] == "65536"
    assert values["FirstBurstLength"] == "65536"  # clipped to MaxBurstLength (13.14)
    assert values["TaskReporting"] == "RFC3720"
    assert n.answered["TaskReporting"] == "Reject"
    assert n.parameters().first_burst_length == 65536


def test_target_offers_keys_with_no_proposal_use_the_default() -> None:
    n = Negotiator({"InitiatorName": INITIATOR, "TargetName": TARGET})
    n.offers()
    assert n.receive([("MaxBurstLength", "65536"), ("DefaultTime2Wait", "1")]) == [
        ("MaxBurstLength", "65536"),
        ("DefaultTime2Wait", "2"),
    ]


def test_target_offers_a_list_we_can_only_refuse() -> None:
    n = Negotiator({"InitiatorName": INITIATOR})
    assert n.receive([("DataDigest", "CRC32C")]) == [("DataDigest", "Reject")]
    assert n.values()["DataDigest"] == "None"
    required = Negotiator({**NORMAL, "DataDigest": "CRC32C"})
    with pytest.raises(NegotiationError, match="DataDigest: none of the target's values"):
        required.receive([("DataDigest", "None")])


def test_first_burst_length_irrelevant_must_not_fail() -> None:
    """The target's InitialR2T=Yes and ImmediateData=No make FirstBurstLength irrelevant
    (RFC 7143 section 13.14): whatever it says about it, nothing fails."""
    n = negotiator(FirstBurstLength="4096")
    n.receive(
        [
            ("FirstBurstLength", "262144"),  # more than we offered: fine, it is irrelevant
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
        ]
    )
    assert "FirstBurstLength" not in n.pending()
    assert n.declined["FirstBurstLength"] == "Irrelevant"
    n2 = negotiator(DefaultTime2Retain="20")
    n2.receive([("InitialR2T", "Yes"), ("ImmediateData", "No"), ("FirstBurstLength", "Irrelevant")])
    assert n2.declined == {"FirstBurstLength": "Irrelevant"}
    assert n2.parameters().first_burst_length == 65536


def test_first_burst_length_relevant_is_checked() -> None:
    n = negotiator(FirstBurstLength="4096")
    with pytest.raises(TargetNegotiationError, match="FirstBurstLength"):
        n.receive([("FirstBurstLength", "262144")])


# --- NotUnderstood, Reject, Irrelevant ----------------------------------------------------------


def test_reject_keeps_the_default_when_it_fits() -> None:
    n = negotiator(HeaderDigest="CRC32C,None", DefaultTime2Retain="20")
    n.receive([("HeaderDigest", "Reject"), ("MaxBurstLength", "NotUnderstood")])
    assert n.declined == {"HeaderDigest": "Reject", "MaxBurstLength": "NotUnderstood"}
    assert n.values()["HeaderDigest"] == "None"
    assert n.values()["MaxBurstLength"] == "262144"
    assert "HeaderDigest" not in n.pending()


def test_reject_of_a_required_digest_fails() -> None:
    n = negotiator(HeaderDigest="CRC32C")
    with pytest.raises(NegotiationError, match="HeaderDigest: the target answered Reject") as info:
        n.receive([("HeaderDigest", "Reject")])
    assert info.value.key == "HeaderDigest"
    assert not isinstance(info.value, TargetProtocolError)  # the target may refuse


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ({"MaxBurstLength": "4096", "FirstBurstLength": "4096"}, ("MaxBurstLength", "Reject")),
        ({"ImmediateData": "No"}, ("ImmediateData", "NotUnderstood")),
        ({"DefaultTime2Retain": "5"}, ("DefaultTime2Retain", "Reject")),
        ({"DefaultTime2Wait": "10"}, ("DefaultTime2Wait", "Reject")),
        ({"DataDigest": "CRC32C"}, ("DataDigest", "Irrelevant")),
    ],
)
def test_declined_offer_whose_default_does_not_fit(
    offer: dict[str, str], answer: tuple[str, str]
) -> None:
    n = negotiator(**offer)
    with pytest.raises(NegotiationError, match=f"{answer[0]}: the target answered {answer[1]}"):
        n.receive([answer])


def test_declined_declaration_is_recorded() -> None:
    n = negotiator(InitiatorAlias="host1")
    n.receive([("InitiatorAlias", "NotUnderstood")])
    assert n.declined == {"InitiatorAlias": "NotUnderstood"}


# --- violations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "pair", "fault"),
    [
        ({"ImmediateData": "No"}, ("ImmediateData", "Yes"), "and result function"),
        ({"InitialR2T": "Yes"}, ("InitialR2T", "No"), "or result function"),
        ({}, ("MaxBurstLength", "16777215"), "min result function"),
        ({"DefaultTime2Wait": "10"}, ("DefaultTime2Wait", "5"), "max result function"),
        ({}, ("MaxBurstLength", "100"), "outside 512"),
        ({}, ("ErrorRecoveryLevel", "7"), "outside 0..2"),
        ({}, ("MaxBurstLength", "lots"), "expected a number"),
        ({}, ("ImmediateData", "Si"), "expected Yes or No"),
        ({"HeaderDigest": "None"}, ("HeaderDigest", "CRC32C"), "HeaderDigest: answered CRC32C"),
        ({"HeaderDigest": "CRC32C,None"}, ("HeaderDigest", "CRC32C,None"), "a list"),
        ({}, ("InitiatorName", INITIATOR), "only the initiator"),
        ({}, ("SessionType", "Normal"), "only the initiator"),
        ({}, ("InitiatorAlias", "x"), "only the initiator"),
        ({}, ("SendTargets", "All"), "only in full feature phase"),
        ({}, ("TaskReporting", "Reject"), "answers a key we never sent"),
        ({}, ("X-com.example.Foo", "NotUnderstood"), "answers a key we never sent"),
        ({}, ("OFMarker", "Irrelevant"), "answers a key we never sent"),
        ({}, ("TargetAlias", "Irrelevant"), "answers a key we never sent"),
        ({}, ("MaxRecvDataSegmentLength", "16777216"), "outside"),
        ({}, ("TargetPortalGroupTag", "65536"), "outside"),
        ({}, ("Bad Key", "1"), "malformed key name"),
    ],
)
def test_target_violations(changes: dict[str, str], pair: tuple[str, str], fault: str) -> None:
    n = negotiator(**changes)
    with pytest.raises(TargetNegotiationError, match=fault) as info:
        n.receive([pair])
    assert isinstance(info.value, TargetProtocolError)
    if pair[0] != "Bad Key":
        assert info.value.key == pair[0]


def test_key_twice_in_one_response() -> None:
    n = negotiator()
    with pytest.raises(TargetNegotiationError, match="MaxBurstLength: sent twice"):
        n.receive([("MaxBurstLength", "65536"), ("MaxBurstLength", "65536")])


def test_key_twice_across_responses() -> None:
    n = negotiator()
    n.receive([("MaxBurstLength", "65536")])
    with pytest.raises(TargetNegotiationError, match="sent twice"):
        n.receive([("MaxBurstLength", "65536")])


def test_offer_twice_across_responses() -> None:
    n = Negotiator({"InitiatorName": INITIATOR})
    n.receive([("DefaultTime2Wait", "5")])
    with pytest.raises(TargetNegotiationError, match="DefaultTime2Wait: sent twice"):
        n.receive([("DefaultTime2Wait", "6")])


def test_unknown_key_twice() -> None:
    n = negotiator()
    with pytest.raises(TargetNegotiationError, match="sent twice"):
        n.receive([("X-foo", "1"), ("X-foo", "2")])


def test_declaration_changed_is_an_error_repeated_is_not() -> None:
    n = negotiator()
    n.receive([("TargetAlias", "disk"), ("TargetPortalGroupTag", "1")])
    n.receive([("TargetAlias", "disk")])  # same value in the next stage: tolerated
    with pytest.raises(TargetNegotiationError, match="TargetPortalGroupTag: sent twice"):
        n.receive([("TargetPortalGroupTag", "2")])


def test_target_address_may_repeat() -> None:
    n = negotiator()
    n.receive([("TargetAddress", "10.0.0.1:3260,1"), ("TargetAddress", "10.0.0.2:3260,1")])
    assert n.declarations()["TargetAddress"] == "10.0.0.2:3260,1"


def test_key_outside_its_login_stage() -> None:
    n = Negotiator({**NORMAL, "AuthMethod": "CHAP"})
    n.offers(Phase.SECURITY)
    with pytest.raises(TargetNegotiationError, match="not allowed in the security stage"):
        n.receive([("AuthMethod", "CHAP"), ("MaxBurstLength", "65536")], Phase.SECURITY)


def test_chap_keys_are_left_to_the_chap_exchange() -> None:
    n = Negotiator({**NORMAL, "AuthMethod": "CHAP"})
    n.offers(Phase.SECURITY)
    reply = n.receive(
        [("AuthMethod", "CHAP"), ("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x0102")],
        Phase.SECURITY,
    )
    assert reply == []
    assert n.receive([("CHAP_N", "tgt"), ("CHAP_R", "0x01")], Phase.SECURITY) == []
    with pytest.raises(TargetNegotiationError, match="CHAP_A: a security key in the operational"):
        n.receive([("CHAP_A", "5")], Phase.OPERATIONAL)


def test_non_leading_connection() -> None:
    n = Negotiator(NORMAL, leading=False)
    offered = dict(n.offers())
    assert "MaxBurstLength" not in offered and "SessionType" not in offered
    assert "MaxBurstLength" in n.dropped
    assert offered["HeaderDigest"] == "None"
    assert offered["MaxRecvDataSegmentLength"] == "262144"
    with pytest.raises(TargetNegotiationError, match="leading-only key"):
        n.receive([("MaxBurstLength", "65536")])


def test_full_feature_text_negotiation() -> None:
    n = Negotiator({"MaxRecvDataSegmentLength": "65536"}, full_feature=True)
    assert n.offers() == [("MaxRecvDataSegmentLength", "65536")]
    assert n.complete
    assert n.receive([("MaxRecvDataSegmentLength", "131072"), ("TargetAlias", "d")]) == []
    params = n.parameters()
    assert params.target_max_recv_data_segment_length == 131072
    assert params.initiator_max_recv_data_segment_length == 65536
    assert n.values() == {}
    with pytest.raises(TargetNegotiationError, match="not allowed in full feature phase"):
        n.receive([("HeaderDigest", "None")])
    with pytest.raises(TargetNegotiationError, match="security key in full feature phase"):
        n.receive([("CHAP_N", "x")])
    with pytest.raises(InvalidProposal, match="full feature"):
        Negotiator({"HeaderDigest": "None"}, full_feature=True)


# --- discovery ----------------------------------------------------------------------------------


def test_discovery_session_drops_irrelevant_keys() -> None:
    n = Negotiator({"InitiatorName": INITIATOR, "SessionType": "Discovery", **OPERATIONAL})
    offered = dict(n.offers())
    assert set(offered) == {
        "InitiatorName",
        "SessionType",
        "HeaderDigest",
        "DataDigest",
        "MaxRecvDataSegmentLength",
        "DefaultTime2Wait",
        "DefaultTime2Retain",
        "ErrorRecoveryLevel",
    }
    assert set(n.dropped) == set(OPERATIONAL) - set(offered)
    answers = n.receive(
        [
            ("TargetPortalGroupTag", "1"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "Yes"),  # the target offers a key a discovery session ignores
        ]
    )
    assert answers == [("InitialR2T", "Irrelevant")]
    assert n.complete
    assert "InitialR2T" not in n.values()
    params = n.parameters()
    assert params.target_max_recv_data_segment_length == 8192
    assert params.initial_r2t  # the default stands


def test_discovery_via_session_type_argument() -> None:
    """login.py declares SessionType itself and passes only the operational proposals."""
    n = Negotiator(OPERATIONAL, session_type="Discovery")
    assert "MaxBurstLength" not in dict(n.offers())


# --- SessionParameters --------------------------------------------------------------------------


def test_defaults() -> None:
    params = SessionParameters.defaults()
    assert params == Negotiator({}).parameters()
    assert params.max_burst_length == 262144
    assert params.first_burst_length == 65536
    assert params.default_time2retain == 20
    assert params.initiator_max_recv_data_segment_length == 8192
    assert params.target_max_recv_data_segment_length == 8192
    assert params.target_alias is None and params.target_portal_group_tag is None
    assert not params.header_digest and not params.data_digest


# --- hypothesis ---------------------------------------------------------------------------------

NUMERIC = {
    name: spec
    for name, spec in KEYS.items()
    if name in OPERATIONAL and spec.type is KeyType.NUMERIC and not spec.declarative
}
BOOLEAN = [name for name in OPERATIONAL if KEYS[name].type is KeyType.BOOLEAN]


@st.composite
def offers_and_answers(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str]]:
    """Random in-range offers, and for each a random answer that its result function allows."""
    offers: dict[str, str] = {}
    answers: dict[str, str] = {}
    for name, spec in NUMERIC.items():
        assert spec.minimum is not None and spec.maximum is not None
        mine = draw(st.integers(spec.minimum, spec.maximum))
        offers[name] = str(mine)
        if spec.rule is ResultRule.MIN:
            answers[name] = str(draw(st.integers(spec.minimum, mine)))
        else:
            answers[name] = str(draw(st.integers(mine, spec.maximum)))
    if int(offers["FirstBurstLength"]) > int(offers["MaxBurstLength"]):
        offers["FirstBurstLength"] = offers["MaxBurstLength"]
        answers["FirstBurstLength"] = str(
            min(int(answers["FirstBurstLength"]), int(offers["MaxBurstLength"]))
        )
    for name in BOOLEAN:
        mine_yes = draw(st.booleans())
        offers[name] = "Yes" if mine_yes else "No"
        if KEYS[name].rule is ResultRule.AND:
            result = draw(st.booleans()) if mine_yes else False
        else:
            result = True if mine_yes else draw(st.booleans())
        answers[name] = "Yes" if result else "No"
    for name in ("HeaderDigest", "DataDigest"):
        digests = draw(st.permutations(["CRC32C", "None"]))[: draw(st.integers(1, 2))]
        offers[name] = ",".join(digests)
        answers[name] = draw(st.sampled_from(digests))
    return offers, answers


@given(offers_and_answers(), st.randoms(use_true_random=False))
def test_result_follows_the_rule(
    case: tuple[dict[str, str], dict[str, str]], rng: random.Random
) -> None:
    offers, answers = case
    n = Negotiator({"InitiatorName": INITIATOR, "TargetName": TARGET, **offers})
    sent = dict(n.offers())
    pairs = [(k, v) for k, v in answers.items() if k in sent]
    rng.shuffle(pairs)
    assert n.receive(pairs) == []
    assert n.complete
    values = n.values()
    expected = {k: v for k, v in answers.items() if k in sent}
    irrelevant = expected.get("InitialR2T") == "Yes" and expected.get("ImmediateData") == "No"
    for key, value in expected.items():
        if key == "FirstBurstLength":
            continue
        assert values[key] == value, key
    if not irrelevant and "FirstBurstLength" in sent:
        first = min(int(expected["FirstBurstLength"]), int(values["MaxBurstLength"]))
        assert values["FirstBurstLength"] == str(first)
    params = n.parameters()
    assert params.first_burst_length <= params.max_burst_length
    assert params.header_digest == (values["HeaderDigest"] == "CRC32C")


@given(offers_and_answers(), st.data())
def test_answer_to_a_target_offer_follows_the_rule(
    case: tuple[dict[str, str], dict[str, str]], data: st.DataObject
) -> None:
    ours, _ = case
    n = Negotiator({"InitiatorName": INITIATOR, "TargetName": TARGET, **ours})
    n.offers(Phase.SECURITY)  # operational keys stay unsent: the target offers first
    theirs: dict[str, str] = {}
    for name, spec in NUMERIC.items():
        assert spec.minimum is not None and spec.maximum is not None
        theirs[name] = str(data.draw(st.integers(spec.minimum, spec.maximum)))
    for name in BOOLEAN:
        theirs[name] = data.draw(st.sampled_from(["Yes", "No"]))
    answers = dict(n.receive(list(theirs.items())))
    for name, value in theirs.items():
        spec = KEYS[name]
        if name == "FirstBurstLength" and answers[name] == "Irrelevant":
            assert answers["InitialR2T"] == "Yes" and answers["ImmediateData"] == "No"
            continue
        a, b = ours[name], value
        match spec.rule:
            case ResultRule.MIN:
                expected = str(min(int(a), int(b)))
            case ResultRule.MAX:
                expected = str(max(int(a), int(b)))
            case ResultRule.AND:
                expected = "Yes" if a == b == "Yes" else "No"
            case _:
                expected = "Yes" if "Yes" in (a, b) else "No"
        assert answers[name] == expected, name
    assert n.values()["MaxBurstLength"] == answers["MaxBurstLength"]


fuzz_values = st.one_of(
    st.sampled_from(["Yes", "No", "None", "CRC32C", "CRC32C,None", "Reject", "Irrelevant"]),
    st.sampled_from(["NotUnderstood", "0", "1", "512", "65536", "16777215", "0x10", "", "a,b"]),
    st.text(max_size=20),
)
fuzz_keys = st.one_of(st.sampled_from(sorted(KEYS)), st.sampled_from(["X-a.b", "X#c", "Zz"]))


@given(
    st.lists(st.tuples(fuzz_keys, fuzz_values), max_size=12),
    st.booleans(),
    st.sampled_from([None, Phase.SECURITY, Phase.OPERATIONAL]),
)
def test_only_negotiation_errors_escape(
    pairs: list[tuple[str, str]], discovery: bool, phase: Phase | None
) -> None:
    """Whatever the target sends, the negotiator fails only with a NegotiationError."""
    session = {"SessionType": "Discovery"} if discovery else {"TargetName": TARGET}
    n = Negotiator({"InitiatorName": INITIATOR, **session, **OPERATIONAL})
    n.offers(phase)
    try:
        n.receive(pairs, phase)
        n.values()
        n.parameters()
    except NegotiationError:
        pass
