"""CHAP authentication for iSCSI login, one-way and mutual (RFC 7143 section 12.1.3, RFC 1994).

Sans-IO: :class:`ChapInitiator` turns the target's keys into ours; the login state machine
carries them in Login PDUs. Randomness (identifiers, challenges) comes from the caller's
``rng``. No secret ever appears in a repr or in an error message.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import AuthenticationError, InitiatorProtocolError, ISCSIError, TargetProtocolError
from .text import decode_binary, encode_binary

__all__ = [
    "DEFAULT_CHAP_ALGORITHMS",
    "MAX_CHAP_BINARY_LENGTH",
    "ChapAlgorithm",
    "ChapConfigError",
    "ChapCredentials",
    "ChapInitiator",
    "chap_response",
    "parse_chap_algorithms",
]

MAX_CHAP_BINARY_LENGTH = 1024
"""RFC 7143 section 12.1.3: CHAP_C and CHAP_R MUST NOT be longer than 1024 bytes."""

_MIN_CHALLENGE_LENGTH = 16
_CHALLENGE_ATTEMPTS = 4
_MASK = "********"
_DECIMAL = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"0[xX][0-9a-fA-F]{1,16}")


class _Hash(Protocol):
    """The part of a hashlib object CHAP uses."""

    @property
    def digest_size(self) -> int: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class ChapConfigError(ISCSIError, ValueError):
    """CHAP settings that cannot work (an unknown algorithm name, an empty user name...).

    A ValueError too, so that the code that reads configuration can catch it with the rest.
    """


class ChapAlgorithm(enum.IntEnum):
    """CHAP_A values: IANA "PPP Authentication Algorithms" (RFC 7143 sections 12.1.3 and 13.13)."""

    MD5 = 5
    SHA1 = 6
    SHA256 = 7
    SHA3_256 = 8

    @property
    def label(self) -> str:
        """The name open-iscsi's ``node.session.auth.chap_algs`` uses ("SHA3-256")."""
        return _LABELS[self]

    @property
    def digest_size(self) -> int:
        """Length in bytes of a CHAP_R computed with this algorithm."""
        return self.new().digest_size

    def new(self) -> _Hash:
        """A fresh hashlib object for this algorithm."""
        return _CONSTRUCTORS[self]()

    @classmethod
    def parse(cls, word: str) -> ChapAlgorithm:
        """One algorithm from a config word: a name (any case, "SHA3-256") or its number."""
        key = word.strip().lower()
        algorithm = _BY_NAME.get(key)
        if algorithm is None and key in {str(int(a)) for a in cls}:
            algorithm = cls(int(key))
        if algorithm is None:
            known = ", ".join(a.label for a in cls)
            raise ChapConfigError(f"unknown CHAP algorithm {word.strip()!r}: use one of {known}")
        return algorithm


_LABELS = {
    ChapAlgorithm.MD5: "MD5",
    ChapAlgorithm.SHA1: "SHA1",
    ChapAlgorithm.SHA256: "SHA256",
    ChapAlgorithm.SHA3_256: "SHA3-256",
}
_CONSTRUCTORS: dict[ChapAlgorithm, Callable[[], _Hash]] = {
    ChapAlgorithm.MD5: hashlib.md5,
    ChapAlgorithm.SHA1: hashlib.sha1,
    ChapAlgorithm.SHA256: hashlib.sha256,
    ChapAlgorithm.SHA3_256: hashlib.sha3_256,
}
_BY_NAME = {
    "md5": ChapAlgorithm.MD5,
    "sha1": ChapAlgorithm.SHA1,
    "sha-1": ChapAlgorithm.SHA1,
    "sha256": ChapAlgorithm.SHA256,
    "sha-256": ChapAlgorithm.SHA256,
    "sha3-256": ChapAlgorithm.SHA3_256,
    "sha3_256": ChapAlgorithm.SHA3_256,
}

# SHA256 (7) is left out on purpose. tgt knows only CHAP_A=5 and CHAP_A=7, and computes 7
# as SHA-1, so offering 7 to tgt ends in a failed authentication. tgt picks the first
# algorithm of our list that it knows: with this list that is MD5, while targets that know
# SHA3-256 (LIO, recent arrays) pick it. RFC 7143 section 12.1.3 also requires offering MD5.
DEFAULT_CHAP_ALGORITHMS: tuple[ChapAlgorithm, ...] = (
    ChapAlgorithm.SHA3_256,
    ChapAlgorithm.SHA1,
    ChapAlgorithm.MD5,
)


def parse_chap_algorithms(text: str) -> tuple[ChapAlgorithm, ...]:
    """open-iscsi's ``node.session.auth.chap_algs`` ("SHA3-256,SHA1,MD5"), in preference order.

    Commas and/or blanks separate the words; repeats are dropped.
    """
    words = [w for w in re.split(r"[\s,]+", text) if w]
    if not words:
        raise ChapConfigError("the CHAP algorithm list is empty: name at least one, e.g. MD5")
    return tuple(dict.fromkeys(ChapAlgorithm.parse(w) for w in words))


def chap_response(
    algorithm: ChapAlgorithm, identifier: int, secret: bytes, challenge: bytes
) -> bytes:
    """H(identifier || secret || challenge), the identifier as one octet (RFC 1994 section 4.1)."""
    if not 0 <= identifier <= 255:
        raise InitiatorProtocolError(f"CHAP identifier {identifier} is not in 0..255")
    h = algorithm.new()
    h.update(bytes((identifier,)))
    h.update(secret)
    h.update(challenge)
    return h.digest()


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


@dataclass(frozen=True, repr=False)
class ChapCredentials:
    """Who we are to the target and, for mutual CHAP, who the target must be to us.

    ``username``/``secret`` authenticate the initiator (open-iscsi's
    ``node.session.auth.username``/``password``); ``username_in``/``secret_in`` are what the
    target must answer with (``username_in``/``password_in``). The repr hides both secrets.
    """

    username: str
    secret: bytes
    username_in: str | None = None
    secret_in: bytes | None = None

    def __post_init__(self) -> None:
        _check_name(self.username, "node.session.auth.username")
        if not self.secret:
            raise ChapConfigError("the CHAP secret (node.session.auth.password) is empty")
        if (self.username_in is None) != (self.secret_in is None):
            raise ChapConfigError(
                "mutual CHAP needs both node.session.auth.username_in and "
                "node.session.auth.password_in"
            )
        if self.username_in is not None:
            _check_name(self.username_in, "node.session.auth.username_in")
            if not self.secret_in:
                raise ChapConfigError(
                    "the mutual CHAP secret (node.session.auth.password_in) is empty"
                )

    @classmethod
    def from_config(
        cls,
        username: str,
        secret: str | bytes,
        username_in: str | None = None,
        secret_in: str | bytes | None = None,
    ) -> ChapCredentials:
        """Credentials from settings, where secrets are text (encoded as UTF-8)."""
        return cls(
            username,
            _as_bytes(secret),
            username_in,
            None if secret_in is None else _as_bytes(secret_in),
        )

    @property
    def mutual(self) -> bool:
        """True when the target must authenticate to us as well."""
        return self.secret_in is not None

    def __repr__(self) -> str:
        secret_in = None if self.secret_in is None else _MASK
        return (
            f"ChapCredentials(username={self.username!r}, secret={_MASK!r}, "
            f"username_in={self.username_in!r}, secret_in={secret_in!r})"
        )


def _check_name(name: str, setting: str) -> None:
    if not name:
        raise ChapConfigError(f"the CHAP user name ({setting}) is empty")
    if "\x00" in name:
        raise ChapConfigError(f"the CHAP user name ({setting}) contains a NUL character")


class _State(enum.Enum):
    START = enum.auto()
    OFFERED = enum.auto()
    RESPONDED = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class ChapInitiator:
    """The initiator's half of a CHAP exchange (RFC 7143 section 12.1.3).

    The login state machine calls :meth:`offer` (CHAP_A), then :meth:`respond` with the
    target's CHAP_A/CHAP_I/CHAP_C, then, for mutual CHAP, :meth:`verify` with the target's
    CHAP_N/CHAP_R. Every failure raises :class:`AuthenticationError` (iscsiadm exit 24).
    """

    def __init__(
        self,
        credentials: ChapCredentials,
        algorithms: Sequence[ChapAlgorithm] = DEFAULT_CHAP_ALGORITHMS,
        *,
        rng: Callable[[int], bytes],
        challenge_length: int = 32,
    ) -> None:
        if not algorithms:
            raise ChapConfigError("no CHAP algorithm to offer")
        if not _MIN_CHALLENGE_LENGTH <= challenge_length <= MAX_CHAP_BINARY_LENGTH:
            raise ChapConfigError(
                f"CHAP challenge length {challenge_length} is not in "
                f"{_MIN_CHALLENGE_LENGTH}..{MAX_CHAP_BINARY_LENGTH}"
            )
        self.credentials = credentials
        self.algorithms: tuple[ChapAlgorithm, ...] = tuple(
            dict.fromkeys(ChapAlgorithm(a) for a in algorithms)
        )
        self.challenge_length = challenge_length
        self._rng = rng
        self._state = _State.START
        self.algorithm: ChapAlgorithm | None = None
        """The algorithm the target chose, once :meth:`respond` has run."""
        self._sent_response = b""
        self._identifier = 0
        self._challenge = b""

    @property
    def mutual(self) -> bool:
        """True when :meth:`verify` must see the target's CHAP_N and CHAP_R."""
        return self.credentials.mutual

    @property
    def done(self) -> bool:
        """True once the exchange has succeeded as far as the initiator can tell."""
        return self._state is _State.DONE

    def offer(self) -> list[tuple[str, str]]:
        """Step 1: CHAP_A with our algorithms in order of preference."""
        self._expect(_State.START, "offer")
        self._state = _State.OFFERED
        return [("CHAP_A", ",".join(str(int(a)) for a in self.algorithms))]

    def respond(self, keys: Mapping[str, str]) -> list[tuple[str, str]]:
        """Step 3: answer the target's challenge, and challenge it back for mutual CHAP."""
        self._expect(_State.OFFERED, "respond")
        self._state = _State.FAILED
        algorithm = self._chosen_algorithm(keys.get("CHAP_A"))
        identifier = _parse_identifier(keys.get("CHAP_I"))
        challenge = _parse_binary(keys.get("CHAP_C"), "CHAP_C")
        if not challenge:
            raise AuthenticationError("the target sent an empty CHAP challenge (CHAP_C)")
        creds = self.credentials
        response = chap_response(algorithm, identifier, creds.secret, challenge)
        answer = [("CHAP_N", creds.username), ("CHAP_R", encode_binary(response))]
        if creds.secret_in is not None:
            if hmac.compare_digest(creds.secret_in, creds.secret):
                # RFC 7143 section 12.1.3: a secret MUST NOT authenticate both directions.
                raise AuthenticationError(
                    "mutual CHAP is configured with the same secret both ways: "
                    "node.session.auth.password_in must differ from node.session.auth.password"
                )
            self._identifier = self._random(1)[0]
            self._challenge = self._new_challenge(avoid=challenge)
            answer += [
                ("CHAP_I", str(self._identifier)),
                ("CHAP_C", encode_binary(self._challenge)),
            ]
        self.algorithm = algorithm
        self._sent_response = response
        self._state = _State.RESPONDED if creds.mutual else _State.DONE
        return answer

    def verify(self, keys: Mapping[str, str]) -> None:
        """Step 5, mutual CHAP only: check the target's CHAP_N and CHAP_R.

        One-way CHAP has nothing to check, so this returns at once. RFC 7143 section
        12.1.3 says the initiator MUST close the connection when this fails.
        """
        if not self.mutual:
            return
        self._expect(_State.RESPONDED, "verify")
        self._state = _State.FAILED
        creds = self.credentials
        assert creds.username_in is not None and creds.secret_in is not None
        assert self.algorithm is not None
        name = keys.get("CHAP_N")
        if name is None:
            raise AuthenticationError("the target failed mutual CHAP: it sent no CHAP_N")
        if name != creds.username_in:
            raise AuthenticationError(
                f"the target failed mutual CHAP: it answered as user {name[:256]!r}, "
                f"node.session.auth.username_in is {creds.username_in!r}"
            )
        received = _parse_binary(keys.get("CHAP_R"), "CHAP_R", verifying=True)
        if hmac.compare_digest(received, self._sent_response):
            raise AuthenticationError(
                "the target failed mutual CHAP: its CHAP_R repeats ours (a reflection attack?)"
            )
        ours = chap_response(self.algorithm, self._identifier, creds.secret, self._challenge)
        if hmac.compare_digest(received, ours):
            # RFC 7143 section 12.1.3: a response we would have made ourselves MUST fail.
            raise AuthenticationError(
                "the target failed mutual CHAP: it answered with our own secret "
                "(node.session.auth.password), not node.session.auth.password_in"
            )
        expected = chap_response(self.algorithm, self._identifier, creds.secret_in, self._challenge)
        if not hmac.compare_digest(received, expected):
            raise AuthenticationError(
                f"the target failed mutual CHAP: its CHAP_R does not match "
                f"node.session.auth.password_in ({self.algorithm.label})"
            )
        self._state = _State.DONE

    def _expect(self, state: _State, step: str) -> None:
        if self._state is not state:
            raise InitiatorProtocolError(
                f"CHAP {step}() called in state {self._state.name}, expected {state.name}"
            )

    def _chosen_algorithm(self, value: str | None) -> ChapAlgorithm:
        offered = ",".join(a.label for a in self.algorithms)
        if value is None:
            raise AuthenticationError("the target did not choose a CHAP algorithm (no CHAP_A)")
        if value in ("Reject", "NotUnderstood", "Irrelevant"):
            raise AuthenticationError(
                f"the target supports none of the CHAP algorithms offered ({offered}; "
                f"CHAP_A={value}): change node.session.auth.chap_algs"
            )
        number = _parse_number(value)
        for algorithm in self.algorithms:
            if algorithm == number:
                return algorithm
        raise AuthenticationError(
            f"the target chose CHAP_A={value[:40]!r}, which is not one we offered ({offered})"
        )

    def _random(self, n: int) -> bytes:
        data = self._rng(n)
        if len(data) != n:
            raise InitiatorProtocolError(f"rng returned {len(data)} bytes, {n} were asked for")
        return bytes(data)

    def _new_challenge(self, avoid: bytes) -> bytes:
        """Our challenge for the target, never equal to the one it sent us.

        RFC 7143 section 12.1.3: an originator MUST NOT reuse the challenge it received,
        or the target could replay our own response as its answer.
        """
        for _ in range(_CHALLENGE_ATTEMPTS):
            challenge = self._random(self.challenge_length)
            if not hmac.compare_digest(challenge, avoid):
                return challenge
        raise AuthenticationError(
            "cannot make a mutual CHAP challenge different from the target's own challenge"
        )


def _parse_identifier(value: str | None) -> int:
    if value is None:
        raise AuthenticationError("the target sent no CHAP identifier (CHAP_I)")
    number = _parse_number(value)
    if number is None or not 0 <= number <= 255:
        raise AuthenticationError(
            f"the target sent CHAP_I={value[:40]!r}, which is not a number in 0..255"
        )
    return number


def _parse_number(value: str) -> int | None:
    """A numerical-value, decimal or hex (RFC 7143 section 6.1); None when it is not one."""
    if _DECIMAL.fullmatch(value):
        return int(value, 10)
    if _HEX.fullmatch(value):
        return int(value[2:], 16)
    return None


def _parse_binary(value: str | None, key: str, *, verifying: bool = False) -> bytes:
    """A CHAP_C or CHAP_R binary-value (RFC 7143 section 6.1), hex (``0x``) or base64 (``0b``)."""
    prefix = "the target failed mutual CHAP: " if verifying else ""
    if value is None:
        raise AuthenticationError(f"{prefix}the target sent no {key}")
    try:
        data = decode_binary(value, key)
    except TargetProtocolError as exc:
        raise AuthenticationError(f"{prefix}the target sent a malformed {key}: {exc}") from None
    if len(data) > MAX_CHAP_BINARY_LENGTH:
        raise AuthenticationError(
            f"{prefix}the target's {key} is {len(data)} bytes long, more than the "
            f"{MAX_CHAP_BINARY_LENGTH} RFC 7143 section 12.1.3 allows"
        )
    return data
