"""The login phase through :class:`Connection` (RFC 7143 sections 6.3, 11.12, 11.13, 12.1.3),
against a target scripted PDU by PDU (tests/protocol/scripted_target.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pyiscsid.protocol.chap import ChapAlgorithm, ChapCredentials
from pyiscsid.protocol.config import DEFAULT_OPERATIONAL, DISCOVERY_OPERATIONAL
from pyiscsid.protocol.connection import Connection, ConnectionState
from pyiscsid.protocol.errors import (
    AuthenticationError,
    AuthenticationFailed,
    LoginRejected,
    NegotiationError,
    ServiceUnavailable,
    TargetNotFound,
    TargetProtocolError,
)
from pyiscsid.protocol.events import (
    Event,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    PingCompleted,
)
from pyiscsid.protocol.negotiation import TargetNegotiationError
from pyiscsid.protocol.pdu import LoginRequest, LoginStage, NopIn, NopOut
from pyiscsid.protocol.text import decode_text, encode_binary, encode_text

from tests.protocol.scripted_target import (
    FIRST_STAT_SN,
    INITIATOR_NAME,
    TARGET_NAME,
    TARGET_TSIH,
    ScriptedTarget,
    answers,
    chap_hash,
    connect,
    keys_of,
    make_config,
)

SECURITY = LoginStage.SECURITY_NEGOTIATION
OPERATIONAL = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
FULL_FEATURE = LoginStage.FULL_FEATURE_PHASE

SECRET = b"initiator-secret-1"
SECRET_IN = b"target-secret-2"
TARGET_USER = "target-user"


def start(**config: object) -> tuple[Connection, ScriptedTarget, LoginRequest]:
    conn = connect(make_config(**config))
    target = ScriptedTarget(conn)
    return conn, target, target.receive_one(LoginRequest)


# --- without authentication -------------------------------------------------------------------


def test_first_request_goes_straight_to_full_feature_phase() -> None:
    conn, _, request = start()
    assert (request.transit, request.continue_) == (True, False)
    assert (request.current_stage, request.next_stage) == (OPERATIONAL, FULL_FEATURE)
    assert (request.version_max, request.version_min) == (0, 0)
    assert request.tsih == 0
    assert request.cmd_sn == 1
    pairs = decode_text(request.data)
    assert pairs[:3] == [
        ("InitiatorName", INITIATOR_NAME),
        ("SessionType", "Normal"),
        ("TargetName", TARGET_NAME),
    ]
    offered = dict(pairs[3:])
    assert offered == dict(DEFAULT_OPERATIONAL)
    assert conn.state is ConnectionState.LOGGING_IN


def test_final_response_completes_the_login() -> None:
    conn, target, request = start()
    keys = [("TargetPortalGroupTag", "7"), ("TargetAlias", "disk one")]
    keys += [("MaxRecvDataSegmentLength", "4096")]
    keys += answers(decode_text(request.data), MaxBurstLength="65536", FirstBurstLength="8192")
    response = target.login_response(request, keys, exp_cmd_sn=1, max_cmd_sn=32)
    assert response.stat_sn == FIRST_STAT_SN

    (event,) = target.send(response)

    assert isinstance(event, LoginCompleted)
    assert event.tsih == TARGET_TSIH
    assert event.target_portal_group_tag == 7
    assert event.target_alias == "disk one"
    params = event.parameters
    assert params.max_burst_length == 65536
    assert params.first_burst_length == 8192
    assert params.target_max_recv_data_segment_length == 4096
    assert params.initiator_max_recv_data_segment_length == 262144
    assert (params.immediate_data, params.initial_r2t) == (True, False)
    assert conn.state is ConnectionState.FULL_FEATURE
    assert conn.tsih == TARGET_TSIH
    assert conn.exp_stat_sn == FIRST_STAT_SN + 1
    assert (conn.exp_cmd_sn, conn.max_cmd_sn) == (1, 32)
    assert conn.parameters == params
    assert target.receive() == []


def test_target_offers_its_own_keys_before_transiting() -> None:
    conn, target, request = start()
    # T=0: the target answers our offers but also offers keys of its own.
    own = [("iSCSIProtocolLevel", "2"), ("X-com.example.Tuning", "fast")]
    reply = target.login_response(
        request, [*answers(decode_text(request.data)), *own], transit=False
    )
    assert target.send(reply) == []
    second = target.receive_one(LoginRequest)
    assert (second.transit, second.current_stage, second.next_stage) == (
        True,
        OPERATIONAL,
        FULL_FEATURE,
    )
    assert second.exp_stat_sn == FIRST_STAT_SN + 1
    assert second.initiator_task_tag == request.initiator_task_tag
    assert second.cmd_sn == request.cmd_sn  # Login Requests are immediate
    assert keys_of(second) == {"iSCSIProtocolLevel": "1", "X-com.example.Tuning": "NotUnderstood"}

    (event,) = target.send(target.login_response(second))
    assert isinstance(event, LoginCompleted)
    assert conn.state is ConnectionState.FULL_FEATURE
    assert conn.exp_stat_sn == FIRST_STAT_SN + 2


def test_continued_response_text_is_asked_for_with_an_empty_request() -> None:
    conn, target, request = start()
    text = encode_text([("TargetPortalGroupTag", "1"), *answers(decode_text(request.data))])
    cut = len(text) // 2 + 3  # anywhere, even inside a pair (RFC 7143 section 6.1)
    first = target.login_response(request, transit=False, continue_=True, data=text[:cut])
    assert target.send(first) == []

    empty = target.receive_one(LoginRequest)
    assert empty.data == b""
    assert (empty.transit, empty.continue_, empty.current_stage) == (False, False, OPERATIONAL)
    assert empty.initiator_task_tag == request.initiator_task_tag

    # The rest of the text; the target may only transit once we ask for it again.
    assert target.send(target.login_response(empty, data=text[cut:])) == []
    again = target.receive_one(LoginRequest)
    assert (again.transit, again.next_stage) == (True, FULL_FEATURE)
    assert again.data == b""
    (event,) = target.send(target.login_response(again))
    assert isinstance(event, LoginCompleted)
    assert conn.state is ConnectionState.FULL_FEATURE


def test_digests_start_after_the_final_login_response() -> None:
    config = make_config(operational={"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"})
    conn, target, request = start(**{"operational": config.operational})
    keys = answers(decode_text(request.data))
    # Final Login Response itself has no digest (RFC 7143 section 13.1)...
    (event,) = target.send(target.login_response(request, keys))
    assert isinstance(event, LoginCompleted)
    assert event.parameters.header_digest and event.parameters.data_digest
    # ...the next PDUs do, both ways.
    target.enable_digests()
    itt = conn.ping(b"digest me", now=1.0)
    ping = target.receive_one(NopOut)
    assert bytes(ping.data) == b"digest me"
    pong = target.make(NopIn, initiator_task_tag=itt, data=b"digest me")
    (completed,) = target.send(pong, now=2.0)
    assert completed == PingCompleted(itt, b"digest me", 1.0)


# --- identity: ISID, TSIH, discovery ------------------------------------------------------------


def test_isid_and_tsih_are_carried_as_configured() -> None:
    _, target, request = start(isid=0x80_12_34_56_00_01, tsih=0x0777, cid=3)
    assert (request.isid, request.tsih, request.cid) == (0x80_12_34_56_00_01, 0x0777, 3)
    (event,) = target.send(target.login_response(request, answers(decode_text(request.data))))
    assert isinstance(event, LoginCompleted)
    assert event.tsih == 0x0777


def test_reinstatement_logs_in_with_the_same_isid_and_tsih_zero() -> None:
    """After a failure at ERL0 the session is reinstated: same ISID, TSIH 0 (RFC 7143 6.3.5)."""
    config = make_config(isid=0x80_AB_CD_EF_00_00)
    isids = set()
    for _ in range(2):
        conn = connect(config)
        request = ScriptedTarget(conn).receive_one(LoginRequest)
        isids.add(request.isid)
        assert request.tsih == 0
        conn.fail()
        assert conn.state is ConnectionState.FAILED
    assert isids == {0x80_AB_CD_EF_00_00}


def test_discovery_session_sends_no_target_name() -> None:
    conn, target, request = start(target_name=None)
    pairs = decode_text(request.data)
    assert pairs[:2] == [("InitiatorName", INITIATOR_NAME), ("SessionType", "Discovery")]
    keys = dict(pairs)
    assert "TargetName" not in keys
    assert dict(pairs[2:]) == dict(DISCOVERY_OPERATIONAL)
    (event,) = target.send(target.login_response(request, answers(pairs)))
    assert isinstance(event, LoginCompleted)
    assert conn.state is ConnectionState.FULL_FEATURE


def test_initiator_alias_is_declared() -> None:
    _, _, request = start(initiator_alias="host one")
    assert keys_of(request)["InitiatorAlias"] == "host one"


# --- CHAP ----------------------------------------------------------------------------------------


def chap_login(
    target: ScriptedTarget,
    *,
    algorithm: int = 5,
    mutual_secret: bytes | None = None,
    mutual_user: str = TARGET_USER,
) -> list[Event]:
    """Play a target that insists on CHAP, echoing the initiator's T bit as RFC 7143 11.13
    requires. Returns the events of the last step the initiator reached."""
    first = target.receive_one(LoginRequest)
    assert (first.current_stage, first.transit) == (SECURITY, False)
    keys = keys_of(first)
    assert keys["AuthMethod"] == "CHAP"
    assert keys["InitiatorName"] == INITIATOR_NAME and keys["TargetName"] == TARGET_NAME
    assert "HeaderDigest" not in keys  # operational keys wait for their stage
    events = target.send(target.login_response(first, [("AuthMethod", "CHAP")]))
    assert events == []

    offer = target.receive_one(LoginRequest)
    assert offer.current_stage is SECURITY
    assert keys_of(offer) == {"CHAP_A": "8,6,5"}
    identifier, challenge = 0x2A, bytes(range(100, 132))
    chap = [("CHAP_A", str(algorithm)), ("CHAP_I", str(identifier))]
    chap.append(("CHAP_C", encode_binary(challenge)))
    assert target.send(target.login_response(offer, chap)) == []

    response = target.receive_one(LoginRequest)
    keys = keys_of(response)
    assert keys["CHAP_N"] == INITIATOR_NAME
    assert keys["CHAP_R"] == encode_binary(chap_hash(algorithm, identifier, SECRET, challenge))
    reply: list[tuple[str, str]] = []
    if mutual_secret is not None:
        their_id = int(keys["CHAP_I"])
        their_challenge = bytes.fromhex(keys["CHAP_C"][2:])
        assert their_challenge != challenge
        digest = chap_hash(algorithm, their_id, mutual_secret, their_challenge)
        reply = [("CHAP_N", mutual_user), ("CHAP_R", encode_binary(digest))]
    else:
        assert "CHAP_C" not in keys
    events = target.send(target.login_response(response, reply))
    if events:
        return events

    # Authenticated: the initiator asks for the operational stage, then offers its keys.
    request = target.receive_one(LoginRequest)
    if request.current_stage is SECURITY:
        assert (request.transit, request.next_stage) == (True, OPERATIONAL)
        assert target.send(target.login_response(request)) == []
        request = target.receive_one(LoginRequest)
    assert (request.current_stage, request.next_stage) == (OPERATIONAL, FULL_FEATURE)
    assert keys_of(request)["HeaderDigest"] == "None"
    return target.send(target.login_response(request, answers(decode_text(request.data))))


@pytest.mark.parametrize("algorithm", [5, 6, 8])
def test_one_way_chap(algorithm: int) -> None:
    credentials = ChapCredentials(INITIATOR_NAME, SECRET)
    conn = connect(make_config(chap=credentials))
    (event,) = chap_login(ScriptedTarget(conn), algorithm=algorithm)
    assert isinstance(event, LoginCompleted)
    assert conn.state is ConnectionState.FULL_FEATURE


def test_mutual_chap() -> None:
    credentials = ChapCredentials(INITIATOR_NAME, SECRET, TARGET_USER, SECRET_IN)
    conn = connect(make_config(chap=credentials))
    (event,) = chap_login(ScriptedTarget(conn), mutual_secret=SECRET_IN)
    assert isinstance(event, LoginCompleted)
    assert conn.state is ConnectionState.FULL_FEATURE


@pytest.mark.parametrize(
    ("secret", "user"),
    [(b"not-the-secret", TARGET_USER), (SECRET_IN, "someone-else"), (SECRET, TARGET_USER)],
    ids=["wrong-secret", "wrong-user", "our-own-secret"],
)
def test_mutual_chap_with_a_wrong_answer_fails(secret: bytes, user: str) -> None:
    credentials = ChapCredentials(INITIATOR_NAME, SECRET, TARGET_USER, SECRET_IN)
    conn = connect(make_config(chap=credentials))
    target = ScriptedTarget(conn)
    (event,) = chap_login(target, mutual_secret=secret, mutual_user=user)
    assert isinstance(event, LoginFailed)
    assert isinstance(event.error, AuthenticationError)
    assert conn.state is ConnectionState.LOGGED_OUT
    assert target.receive() == []


def test_target_that_does_not_want_chap_fails_authentication() -> None:
    conn = connect(make_config(chap=ChapCredentials(INITIATOR_NAME, SECRET)))
    target = ScriptedTarget(conn)
    first = target.receive_one(LoginRequest)
    (event,) = target.send(target.login_response(first, [("AuthMethod", "None")]))
    assert isinstance(event, LoginFailed)
    assert isinstance(event.error, AuthenticationError)


# --- the target says no ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ((0x02, 0x01), AuthenticationFailed),
        ((0x02, 0x03), TargetNotFound),
        ((0x03, 0x01), ServiceUnavailable),
    ],
)
def test_login_rejected(status: tuple[int, int], error: type[LoginRejected]) -> None:
    conn, target, request = start()
    status_class, status_detail = status
    response = target.login_response(
        request, transit=False, status_class=status_class, status_detail=status_detail
    )
    (event,) = target.send(response)
    assert isinstance(event, LoginFailed)
    assert type(event.error) is error
    assert (event.error.status_class, event.error.status_detail) == status
    assert conn.state is ConnectionState.LOGGED_OUT
    assert target.receive() == []


def test_authentication_failed_is_an_authentication_error() -> None:
    _, target, request = start()
    (event,) = target.send(
        target.login_response(request, transit=False, status_class=2, status_detail=1)
    )
    assert isinstance(event, LoginFailed)
    assert isinstance(event.error, AuthenticationError)


@pytest.mark.parametrize(
    ("detail", "address", "expected"),
    [
        (0x01, "192.0.2.7:3261,1", ("192.0.2.7", 3261, False)),
        (0x02, "192.0.2.8", ("192.0.2.8", 3260, True)),
        (0x01, "[2001:db8::1]:3262,2", ("2001:db8::1", 3262, False)),
    ],
)
def test_redirect(detail: int, address: str, expected: tuple[str, int, bool]) -> None:
    conn, target, request = start()
    response = target.login_response(
        request, [("TargetAddress", address)], transit=False, status_class=1, status_detail=detail
    )
    (event,) = target.send(response)
    assert event == LoginRedirected(*expected)
    assert conn.state is ConnectionState.LOGGED_OUT


def test_redirect_without_an_address_is_a_protocol_error() -> None:
    conn, target, request = start()
    response = target.login_response(request, transit=False, status_class=1, status_detail=1)
    with pytest.raises(TargetProtocolError):
        target.send(response)
    assert conn.state is ConnectionState.FAILED


# --- the target breaks the protocol ------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"initiator_task_tag": 0x1234},
        {"isid": 0x80_00_00_00_00_99},
        {"version_active": 1},
        {"current_stage": SECURITY},
    ],
    ids=["itt", "isid", "version", "stage"],
)
def test_wrong_login_response_is_a_protocol_error(fields: dict[str, Any]) -> None:
    conn, target, request = start()
    response = target.login_response(request, answers(decode_text(request.data)), **fields)
    with pytest.raises(TargetProtocolError):
        target.send(response)
    assert conn.state is ConnectionState.FAILED
    assert target.receive() == []
    # A failed connection ignores whatever comes next.
    assert conn.receive_data(target.encode(response), 1.0) == []


def test_new_session_with_tsih_zero_is_a_protocol_error() -> None:
    conn, target, request = start()
    response = target.login_response(request, answers(decode_text(request.data)), tsih=0)
    with pytest.raises(TargetProtocolError):
        target.send(response)
    assert conn.state is ConnectionState.FAILED


def test_other_pdu_during_login_is_a_protocol_error() -> None:
    conn, target, _ = start()
    with pytest.raises(TargetProtocolError):
        target.send(target.data_in(0, b"x"))
    assert conn.state is ConnectionState.FAILED


def test_unanswered_offers_keep_the_rfc_default() -> None:
    """tgt leaves out answers equal to the RFC default; the default then holds."""
    _, target, request = start()
    keys = [(k, v) for k, v in answers(decode_text(request.data)) if k != "InitialR2T"]
    (event,) = target.send(target.login_response(request, keys))
    assert isinstance(event, LoginCompleted)
    assert event.parameters.initial_r2t  # the default Yes, which our offer No allows (OR)


def test_unanswered_offer_whose_default_does_not_fit_fails_the_login() -> None:
    """DefaultTime2Retain: we offer 0, the default 20 is more than the MIN rule allows."""
    conn, target, request = start()
    keys = [(k, v) for k, v in answers(decode_text(request.data)) if k != "DefaultTime2Retain"]
    (event,) = target.send(target.login_response(request, keys))
    assert isinstance(event, LoginFailed)
    assert isinstance(event.error, NegotiationError)
    assert conn.state is ConnectionState.LOGGED_OUT


def test_nothing_is_read_after_a_failed_login() -> None:
    conn, target, request = start()
    rejected = target.login_response(request, transit=False, status_class=2, status_detail=1)
    (event,) = target.send(rejected, target.data_in(0x5EE, b"junk"))
    assert isinstance(event, LoginFailed)
    assert conn.state is ConnectionState.LOGGED_OUT


def test_login_bytes_may_arrive_one_at_a_time() -> None:
    conn, target, request = start()
    data = target.encode(target.login_response(request, answers(decode_text(request.data))))
    events = []
    for i in range(len(data)):
        events += conn.receive_data(data[i : i + 1], 0.0)
    assert [type(e) for e in events] == [LoginCompleted]


def test_chap_algorithm_not_offered_fails() -> None:
    conn = connect(make_config(chap=ChapCredentials(INITIATOR_NAME, SECRET)))
    target = ScriptedTarget(conn)
    first = target.receive_one(LoginRequest)
    target.send(target.login_response(first, [("AuthMethod", "CHAP")]))
    offer = target.receive_one(LoginRequest)
    chap = [("CHAP_A", str(int(ChapAlgorithm.SHA256))), ("CHAP_I", "1"), ("CHAP_C", "0x0102")]
    (event,) = target.send(target.login_response(offer, chap))
    assert isinstance(event, LoginFailed)
    assert isinstance(event.error, AuthenticationError)
    assert conn.state is ConnectionState.LOGGED_OUT


def test_login_response_with_transit_and_continue_is_a_protocol_error() -> None:
    conn, target, request = start()
    bad = target.login_response(request, transit=True, continue_=True)
    with pytest.raises(TargetProtocolError, match="T and the C bit"):
        target.send(bad)
    assert conn.state is ConnectionState.FAILED


# --- declarations are checked in every stage (RFC 7143 section 13.9) ----------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("65536", "outside 0..65535"),
        ("0x" + "f" * 24, "outside 0..65535"),
        ("-1", "expected a number"),
        ("one", "expected a number"),
    ],
    ids=["65536", "96-bit-hex", "negative", "not-a-number"],
)
@pytest.mark.parametrize("stage", ["security", "operational"])
def test_target_portal_group_tag_out_of_range_fails_the_login(
    value: str, message: str, stage: str
) -> None:
    """TargetPortalGroupTag is 16 bits, whichever stage declares it. The scripted target
    plays a broken one: no real target declares a 96-bit tag."""
    chap = ChapCredentials(INITIATOR_NAME, SECRET) if stage == "security" else None
    conn, target, request = start(chap=chap)
    keys = [("TargetPortalGroupTag", value)]
    if stage == "security":
        keys.insert(0, ("AuthMethod", "CHAP"))
    else:
        keys += answers(decode_text(request.data))
    (event,) = target.send(target.login_response(request, keys))
    assert isinstance(event, LoginFailed)
    assert isinstance(event.error, TargetNegotiationError)
    assert str(event.error).startswith("TargetPortalGroupTag: ") and message in str(event.error)
    assert conn.state is ConnectionState.LOGGED_OUT
    assert target.receive() == []


def test_target_portal_group_tag_declared_in_the_security_stage_is_kept() -> None:
    conn = connect(make_config(chap=ChapCredentials(INITIATOR_NAME, SECRET)))
    target = ScriptedTarget(conn)
    first = target.receive_one(LoginRequest)
    declared = [("AuthMethod", "CHAP"), ("TargetPortalGroupTag", "0xffff")]
    assert target.send(target.login_response(first, declared)) == []
    offer = target.receive_one(LoginRequest)
    challenge = bytes(range(16))
    chap = [("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", encode_binary(challenge))]
    assert target.send(target.login_response(offer, chap)) == []
    response = target.receive_one(LoginRequest)
    (event,) = target.send(target.login_response(response, next_stage=FULL_FEATURE))
    assert isinstance(event, LoginCompleted)
    assert event.target_portal_group_tag == 0xFFFF
