"""CHAP (RFC 7143 section 12.1.3): known answers, full exchanges against a target played here
with hashlib, every failure path, and no secret in any repr or message."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.protocol.chap import (
    DEFAULT_CHAP_ALGORITHMS,
    ChapAlgorithm,
    ChapConfigError,
    ChapCredentials,
    ChapInitiator,
    chap_response,
    parse_chap_algorithms,
)
from pyiscsid.protocol.errors import AuthenticationError, InitiatorProtocolError, ISCSIError

HASHES: dict[int, Callable[[bytes], bytes]] = {
    5: lambda b: hashlib.md5(b).digest(),
    6: lambda b: hashlib.sha1(b).digest(),
    7: lambda b: hashlib.sha256(b).digest(),
    8: lambda b: hashlib.sha3_256(b).digest(),
}

SECRET = b"out-secret-Xyzzy42"
SECRET_IN = b"in-secret-Plugh17"
SECRETS = (SECRET, SECRET_IN)
ONE_WAY = ChapCredentials("iqn.2024-01.org.example:init", SECRET)
MUTUAL = ChapCredentials("iqn.2024-01.org.example:init", SECRET, "target-user", SECRET_IN)


def h(alg: int, identifier: int, secret: bytes, challenge: bytes) -> bytes:
    return HASHES[alg](bytes([identifier]) + secret + challenge)


def counting_rng() -> Callable[[int], bytes]:
    """Deterministic, never repeats: each call returns the next bytes of a counter stream."""
    counter = itertools.count(1)

    def rng(n: int) -> bytes:
        return bytes(next(counter) % 256 for _ in range(n))

    return rng


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret.decode() not in text
        assert secret.hex() not in text.lower()
        assert base64.b64encode(secret).decode() not in text


def assert_auth_error(exc: pytest.ExceptionInfo[BaseException]) -> None:
    assert isinstance(exc.value, AuthenticationError)
    assert_no_secret(str(exc.value))
    assert_no_secret(repr(exc.value))


# --- known answers ---------------------------------------------------------------------------

# Computed outside Python: printf '\x07Open Sesame\x00\x01\x02\x03\xfe\xff\x10\x20' | md5sum
# (sha1sum, sha256sum, openssl dgst -sha3-256).
KAT_ID = 7
KAT_SECRET = b"Open Sesame"
KAT_CHALLENGE = bytes.fromhex("00010203feff1020")
KAT = {
    ChapAlgorithm.MD5: "5683c5cf3d3e78443b9f12cb3db96000",
    ChapAlgorithm.SHA1: "55973939343e57cd83e3a9897fbc519133ddffcc",
    ChapAlgorithm.SHA256: "218306be9eee1e05a8cc6b97680c817630a0ff7de96618fa7c9caba43f9ac902",
    ChapAlgorithm.SHA3_256: "a77a5a45107d1d23b71a54b4da746f68c3244926c9307e36ce2628b61f29bf43",
}


@pytest.mark.parametrize("algorithm", list(ChapAlgorithm))
def test_chap_response_known_answer(algorithm: ChapAlgorithm) -> None:
    got = chap_response(algorithm, KAT_ID, KAT_SECRET, KAT_CHALLENGE)
    assert got.hex() == KAT[algorithm]
    assert got == h(algorithm, KAT_ID, KAT_SECRET, KAT_CHALLENGE)


@given(
    algorithm=st.sampled_from(list(ChapAlgorithm)),
    identifier=st.integers(0, 255),
    secret=st.binary(min_size=1, max_size=64),
    challenge=st.binary(min_size=1, max_size=1024),
)
def test_chap_response_matches_hashlib(
    algorithm: ChapAlgorithm, identifier: int, secret: bytes, challenge: bytes
) -> None:
    assert chap_response(algorithm, identifier, secret, challenge) == h(
        algorithm, identifier, secret, challenge
    )


@pytest.mark.parametrize("identifier", [-1, 256])
def test_chap_response_rejects_identifier_out_of_range(identifier: int) -> None:
    with pytest.raises(InitiatorProtocolError):
        chap_response(ChapAlgorithm.MD5, identifier, b"s", b"c")


def test_algorithm_numbers_and_sizes() -> None:
    assert [int(a) for a in ChapAlgorithm] == [5, 6, 7, 8]
    sizes = {a: a.digest_size for a in ChapAlgorithm}
    assert sizes == {
        ChapAlgorithm.MD5: 16,
        ChapAlgorithm.SHA1: 20,
        ChapAlgorithm.SHA256: 32,
        ChapAlgorithm.SHA3_256: 32,
    }
    assert [a.label for a in ChapAlgorithm] == ["MD5", "SHA1", "SHA256", "SHA3-256"]


def test_default_algorithms_leave_out_sha256_for_tgt() -> None:
    assert DEFAULT_CHAP_ALGORITHMS == (
        ChapAlgorithm.SHA3_256,
        ChapAlgorithm.SHA1,
        ChapAlgorithm.MD5,
    )
    assert ChapAlgorithm.SHA256 not in DEFAULT_CHAP_ALGORITHMS


# --- config parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MD5", (5,)),
        ("SHA3-256,SHA256,SHA1,MD5", (8, 7, 6, 5)),
        ("sha3-256, sha1 ,md5", (8, 6, 5)),
        ("Sha256", (7,)),
        ("SHA-1 sha3_256", (6, 8)),
        ("8,5", (8, 5)),
        ("MD5,md5,5", (5,)),
    ],
)
def test_parse_chap_algorithms(text: str, expected: tuple[int, ...]) -> None:
    assert parse_chap_algorithms(text) == expected


@pytest.mark.parametrize(
    ("text", "bad"), [("SHA3-256,SHA512", "SHA512"), ("md4", "md4"), ("MD5,9", "9")]
)
def test_parse_chap_algorithms_names_the_bad_word(text: str, bad: str) -> None:
    with pytest.raises(ChapConfigError, match=bad) as exc:
        parse_chap_algorithms(text)
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, ISCSIError)
    assert "SHA3-256" in str(exc.value)  # says what would work


@pytest.mark.parametrize("text", ["", " , ,"])
def test_parse_chap_algorithms_empty(text: str) -> None:
    with pytest.raises(ChapConfigError, match="empty"):
        parse_chap_algorithms(text)


# --- credentials -----------------------------------------------------------------------------


def test_credentials_repr_hides_secrets() -> None:
    for creds in (ONE_WAY, MUTUAL):
        for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}"):
            assert_no_secret(text)
            assert "********" in text
            assert creds.username in text
    assert "secret_in=None" in repr(ONE_WAY)
    assert "target-user" in repr(MUTUAL)


def test_credentials_mutual() -> None:
    assert not ONE_WAY.mutual
    assert MUTUAL.mutual


def test_credentials_from_config_encodes_text() -> None:
    creds = ChapCredentials.from_config("u", "pässwörd-long", "t", "other-secret")
    assert creds.secret == "pässwörd-long".encode()
    assert creds.secret_in == b"other-secret"
    assert ChapCredentials.from_config("u", b"raw").secret == b"raw"


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("", SECRET), "username"),
        (("u\x00x", SECRET), "NUL"),
        (("u", b""), "password"),
        (("u", SECRET, "t", None), "password_in"),
        (("u", SECRET, None, SECRET_IN), "username_in"),
        (("u", SECRET, "", SECRET_IN), "username_in"),
        (("u", SECRET, "t", b""), "password_in"),
    ],
)
def test_credentials_validation(args: tuple[Any, ...], word: str) -> None:
    with pytest.raises(ChapConfigError, match=word) as exc:
        ChapCredentials(*args)
    assert_no_secret(str(exc.value))


def test_initiator_settings_validation() -> None:
    with pytest.raises(ChapConfigError):
        ChapInitiator(ONE_WAY, (), rng=os.urandom)
    with pytest.raises(ChapConfigError):
        ChapInitiator(ONE_WAY, rng=os.urandom, challenge_length=8)
    with pytest.raises(ChapConfigError):
        ChapInitiator(ONE_WAY, rng=os.urandom, challenge_length=1025)


# --- a target played with hashlib ------------------------------------------------------------


class FakeTarget:
    """The target's side of RFC 7143 section 12.1.3, written independently of chap.py."""

    def __init__(
        self,
        known: tuple[int, ...] = (5, 6, 7, 8),
        secret: bytes = SECRET,
        secret_out: bytes = SECRET_IN,
        name_out: str = "target-user",
        identifier: int = 0xA5,
        challenge: bytes = b"\x11" * 24,
    ) -> None:
        self.known = known
        self.secret = secret
        self.secret_out = secret_out
        self.name_out = name_out
        self.identifier = identifier
        self.challenge = challenge
        self.alg = 0

    def challenge_keys(self, offer: list[tuple[str, str]]) -> dict[str, str]:
        [(key, value)] = offer
        assert key == "CHAP_A"
        for word in value.split(","):
            if int(word) in self.known:
                self.alg = int(word)
                break
        else:
            return {"CHAP_A": "Reject"}
        return {
            "CHAP_A": str(self.alg),
            "CHAP_I": str(self.identifier),
            "CHAP_C": "0x" + self.challenge.hex(),
        }

    def check(self, answer: list[tuple[str, str]]) -> dict[str, str]:
        keys = dict(answer)
        assert len(keys) == len(answer)
        assert keys["CHAP_N"] == "iqn.2024-01.org.example:init"
        assert keys["CHAP_R"].startswith("0x")
        expected = h(self.alg, self.identifier, self.secret, self.challenge)
        assert bytes.fromhex(keys["CHAP_R"][2:]) == expected
        if "CHAP_C" not in keys:
            return {}
        their_id = int(keys["CHAP_I"])
        their_challenge = bytes.fromhex(keys["CHAP_C"][2:])
        response = h(self.alg, their_id, self.secret_out, their_challenge)
        return {"CHAP_N": self.name_out, "CHAP_R": "0x" + response.hex()}


def exchange(
    initiator: ChapInitiator, target: FakeTarget
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    answer = initiator.respond(target.challenge_keys(initiator.offer()))
    return answer, target.check(answer)


def test_offer_lists_algorithms_in_preference_order() -> None:
    assert ChapInitiator(ONE_WAY, rng=os.urandom).offer() == [("CHAP_A", "8,6,5")]
    chosen = ChapInitiator(ONE_WAY, parse_chap_algorithms("MD5,SHA256"), rng=os.urandom)
    assert chosen.offer() == [("CHAP_A", "5,7")]


@pytest.mark.parametrize(
    ("known", "chosen"),
    [((5, 7), 5), ((5, 6, 7, 8), 8), ((5, 6), 6), ((5,), 5)],
)
def test_one_way_exchange(known: tuple[int, ...], chosen: int) -> None:
    initiator = ChapInitiator(ONE_WAY, rng=os.urandom)
    target = FakeTarget(known=known)
    answer, reply = exchange(initiator, target)
    assert [k for k, _ in answer] == ["CHAP_N", "CHAP_R"]
    assert reply == {}
    assert initiator.algorithm == chosen
    assert initiator.done
    initiator.verify({})  # nothing to verify one way
    assert initiator.done


@pytest.mark.parametrize("algorithm", list(ChapAlgorithm))
def test_mutual_exchange(algorithm: ChapAlgorithm) -> None:
    initiator = ChapInitiator(MUTUAL, (algorithm,), rng=os.urandom)
    target = FakeTarget()
    answer, reply = exchange(initiator, target)
    assert [k for k, _ in answer] == ["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"]
    challenge = bytes.fromhex(dict(answer)["CHAP_C"][2:])
    assert len(challenge) == 32
    assert 0 <= int(dict(answer)["CHAP_I"]) <= 255
    assert not initiator.done
    initiator.verify(reply)
    assert initiator.done


def test_mutual_uses_rng_for_identifier_and_challenge() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes([0x42] * n)

    initiator = ChapInitiator(MUTUAL, rng=rng, challenge_length=20)
    answer, _ = exchange(initiator, FakeTarget())
    assert calls == [1, 20]
    assert dict(answer)["CHAP_I"] == "66"
    assert dict(answer)["CHAP_C"] == "0x" + "42" * 20


def test_mutual_accepts_base64_response() -> None:
    initiator = ChapInitiator(MUTUAL, rng=os.urandom)
    _, reply = exchange(initiator, FakeTarget())
    raw = bytes.fromhex(reply["CHAP_R"][2:])
    reply["CHAP_R"] = "0b" + base64.b64encode(raw).decode()
    initiator.verify(reply)
    assert initiator.done


@pytest.mark.parametrize(
    "keys",
    [
        {"CHAP_A": "5", "CHAP_I": "0", "CHAP_C": "0b" + base64.b64encode(b"c" * 16).decode()},
        {"CHAP_A": "0x5", "CHAP_I": "0xff", "CHAP_C": "0X" + "AB" * 16},
        {"CHAP_A": "5", "CHAP_I": "007", "CHAP_C": "0x" + "a" * 31},  # odd hex digits
        {"CHAP_A": "5", "CHAP_I": "255", "CHAP_C": "0x" + "ab" * 1024},
    ],
)
def test_respond_accepts_value_forms(keys: dict[str, str]) -> None:
    initiator = ChapInitiator(ONE_WAY, (ChapAlgorithm.MD5,), rng=os.urandom)
    initiator.offer()
    answer = dict(initiator.respond(keys))
    assert len(bytes.fromhex(answer["CHAP_R"][2:])) == 16


@given(
    algorithm=st.sampled_from(list(ChapAlgorithm)),
    identifier=st.integers(0, 255),
    challenge=st.binary(min_size=1, max_size=1024),
    secret=st.binary(min_size=1, max_size=64),
    secret_in=st.binary(min_size=1, max_size=64),
)
def test_mutual_exchange_any_values(
    algorithm: ChapAlgorithm, identifier: int, challenge: bytes, secret: bytes, secret_in: bytes
) -> None:
    if secret == secret_in:
        return
    creds = ChapCredentials("iqn.2024-01.org.example:init", secret, "target-user", secret_in)
    initiator = ChapInitiator(creds, (algorithm,), rng=counting_rng())
    target = FakeTarget(
        secret=secret, secret_out=secret_in, identifier=identifier, challenge=challenge
    )
    _, reply = exchange(initiator, target)
    initiator.verify(reply)
    assert initiator.done


@given(flip=st.integers(0, 32 * 8 - 1))
def test_mutual_any_corrupted_response_fails(flip: int) -> None:
    initiator = ChapInitiator(MUTUAL, (ChapAlgorithm.SHA3_256,), rng=counting_rng())
    _, reply = exchange(initiator, FakeTarget())
    raw = bytearray(bytes.fromhex(reply["CHAP_R"][2:]))
    raw[flip // 8] ^= 1 << (flip % 8)
    with pytest.raises(AuthenticationError, match="does not match") as exc:
        initiator.verify({**reply, "CHAP_R": "0x" + raw.hex()})
    assert_auth_error(exc)


# --- failures while answering the target's challenge -----------------------------------------

GOOD = {"CHAP_A": "5", "CHAP_I": "1", "CHAP_C": "0x" + "cd" * 16}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"CHAP_A": None}, "no CHAP_A"),
        ({"CHAP_A": "Reject"}, "none of the CHAP algorithms"),
        ({"CHAP_A": "NotUnderstood"}, "none of the CHAP algorithms"),
        ({"CHAP_A": "7"}, "not one we offered"),
        ({"CHAP_A": "9"}, "not one we offered"),
        ({"CHAP_A": "5,6"}, "not one we offered"),
        ({"CHAP_A": "md5"}, "not one we offered"),
        ({"CHAP_A": ""}, "not one we offered"),
        ({"CHAP_I": None}, "CHAP_I"),
        ({"CHAP_I": "256"}, "0..255"),
        ({"CHAP_I": "-1"}, "0..255"),
        ({"CHAP_I": "+1"}, "0..255"),
        ({"CHAP_I": " 1"}, "0..255"),
        ({"CHAP_I": "0x100"}, "0..255"),
        ({"CHAP_I": "one"}, "0..255"),
        ({"CHAP_I": ""}, "0..255"),
        ({"CHAP_C": None}, "no CHAP_C"),
        ({"CHAP_C": ""}, "malformed CHAP_C"),
        ({"CHAP_C": "0x"}, "empty"),
        ({"CHAP_C": "0b"}, "empty"),
        ({"CHAP_C": "0xZZ"}, "malformed CHAP_C"),
        ({"CHAP_C": "0b!!!!"}, "malformed CHAP_C"),
        ({"CHAP_C": "cdcdcdcd"}, "malformed CHAP_C"),
        ({"CHAP_C": "0x" + "ab" * 1025}, "1025 bytes"),
        ({"CHAP_C": "0b" + base64.b64encode(b"x" * 1025).decode()}, "1025 bytes"),
    ],
)
@pytest.mark.parametrize("creds", [ONE_WAY, MUTUAL], ids=["one-way", "mutual"])
def test_respond_rejects(creds: ChapCredentials, change: dict[str, str | None], match: str) -> None:
    keys = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    initiator = ChapInitiator(creds, rng=os.urandom)
    initiator.offer()
    with pytest.raises(AuthenticationError, match=match) as exc:
        initiator.respond(keys)
    assert_auth_error(exc)
    assert not initiator.done
    with pytest.raises(InitiatorProtocolError):  # a failed exchange cannot be resumed
        initiator.respond(GOOD)


def test_reject_names_the_setting_to_change() -> None:
    initiator = ChapInitiator(ONE_WAY, rng=os.urandom)
    initiator.offer()
    with pytest.raises(AuthenticationError) as exc:
        initiator.respond({"CHAP_A": "Reject"})
    assert "SHA3-256,SHA1,MD5" in str(exc.value)
    assert "chap_algs" in str(exc.value)


def test_mutual_with_the_same_secret_both_ways_is_refused() -> None:
    creds = ChapCredentials("u", SECRET, "t", SECRET)
    initiator = ChapInitiator(creds, rng=os.urandom)
    initiator.offer()
    with pytest.raises(AuthenticationError, match="same secret") as exc:
        initiator.respond(GOOD)
    assert_auth_error(exc)


def test_reflected_challenge_is_regenerated() -> None:
    target_challenge = bytes([7] * 32)
    answers = iter([b"\x05", target_challenge, bytes([8] * 32)])
    initiator = ChapInitiator(MUTUAL, rng=lambda n: next(answers))
    answer = dict(
        initiator.respond(FakeTarget(challenge=target_challenge).challenge_keys(initiator.offer()))
    )
    assert answer["CHAP_C"] == "0x" + "08" * 32


def test_reflected_challenge_refused_when_rng_insists() -> None:
    target_challenge = bytes([7] * 32)

    def rng(n: int) -> bytes:
        return b"\x05" if n == 1 else target_challenge

    initiator = ChapInitiator(MUTUAL, rng=rng)
    with pytest.raises(AuthenticationError, match="challenge") as exc:
        initiator.respond(FakeTarget(challenge=target_challenge).challenge_keys(initiator.offer()))
    assert_auth_error(exc)


def test_rng_returning_the_wrong_length_is_our_bug() -> None:
    initiator = ChapInitiator(MUTUAL, rng=lambda n: b"\x01" * (n - 1))
    initiator.offer()
    with pytest.raises(InitiatorProtocolError, match="rng"):
        initiator.respond(GOOD)


def test_steps_out_of_order() -> None:
    initiator = ChapInitiator(MUTUAL, rng=os.urandom)
    with pytest.raises(InitiatorProtocolError):
        initiator.respond(GOOD)
    with pytest.raises(InitiatorProtocolError):
        initiator.verify({})
    initiator.offer()
    with pytest.raises(InitiatorProtocolError):
        initiator.offer()
    with pytest.raises(InitiatorProtocolError):
        initiator.verify({})


def test_one_way_ignores_target_chap_n_and_r() -> None:
    initiator = ChapInitiator(ONE_WAY, rng=os.urandom)
    initiator.offer()
    initiator.respond({**GOOD, "CHAP_N": "x", "CHAP_R": "0x00"})
    initiator.verify({"CHAP_N": "x", "CHAP_R": "garbage"})
    assert initiator.done


# --- failures while verifying the target (mutual CHAP) ---------------------------------------


@pytest.fixture
def mutual_state() -> Iterator[tuple[ChapInitiator, list[tuple[str, str]], dict[str, str]]]:
    initiator = ChapInitiator(MUTUAL, (ChapAlgorithm.SHA1,), rng=counting_rng())
    answer, reply = exchange(initiator, FakeTarget())
    yield initiator, answer, reply


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"CHAP_N": None}, "no CHAP_N"),
        ({"CHAP_N": "someone-else"}, "someone-else"),
        ({"CHAP_R": None}, "no CHAP_R"),
        ({"CHAP_R": "0xQQ"}, "malformed CHAP_R"),
        ({"CHAP_R": "nothex"}, "malformed CHAP_R"),
        ({"CHAP_R": "0x"}, "does not match"),
        ({"CHAP_R": "0x" + "00" * 20}, "does not match"),
        ({"CHAP_R": "0x" + "00" * 1025}, "1025 bytes"),
    ],
)
def test_verify_rejects(
    mutual_state: tuple[ChapInitiator, list[tuple[str, str]], dict[str, str]],
    change: dict[str, str | None],
    match: str,
) -> None:
    initiator, _, reply = mutual_state
    keys = {k: v for k, v in {**reply, **change}.items() if v is not None}
    with pytest.raises(AuthenticationError, match=match) as exc:
        initiator.verify(keys)
    assert "the target failed mutual CHAP" in str(exc.value)
    assert_auth_error(exc)
    assert not initiator.done
    with pytest.raises(InitiatorProtocolError):
        initiator.verify(reply)


def test_verify_rejects_a_response_computed_with_the_wrong_secret_in() -> None:
    initiator = ChapInitiator(MUTUAL, rng=os.urandom)
    _, reply = exchange(initiator, FakeTarget(secret_out=b"some-other-secret"))
    with pytest.raises(AuthenticationError, match="password_in") as exc:
        initiator.verify(reply)
    assert_auth_error(exc)


def test_verify_rejects_our_own_response_reflected(
    mutual_state: tuple[ChapInitiator, list[tuple[str, str]], dict[str, str]],
) -> None:
    initiator, answer, reply = mutual_state
    with pytest.raises(AuthenticationError, match="repeats ours") as exc:
        initiator.verify({**reply, "CHAP_R": dict(answer)["CHAP_R"]})
    assert_auth_error(exc)


def test_verify_rejects_a_response_made_with_our_own_secret() -> None:
    """RFC 7143 12.1.3: a response the receiver would have made itself MUST fail."""
    initiator = ChapInitiator(MUTUAL, rng=os.urandom)
    _, reply = exchange(initiator, FakeTarget(secret_out=SECRET))
    with pytest.raises(AuthenticationError, match="our own secret") as exc:
        initiator.verify(reply)
    assert_auth_error(exc)
