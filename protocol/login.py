"""The login phase of one connection (RFC 7143 sections 6.3 and 11.12-11.13).

The login moves through stages in one table, :data:`_STAGE_TRANSITIONS`: the security stage
(AuthMethod, then CHAP), the operational stage (every key of :mod:`keys`), and full-feature
phase. A login without authentication starts directly in the operational stage, which saves
a round trip; a target that insists on CHAP then answers "authentication failed".
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .chap import ChapInitiator
from .config import ConnectionConfig
from .discovery import parse_target_address
from .errors import (
    AuthenticationError,
    ISCSIError,
    NegotiationError,
    TargetProtocolError,
    login_error_for,
)
from .events import Event, LoginCompleted, LoginFailed, LoginRedirected
from .keys import KEYS
from .negotiation import Negotiator, SessionParameters, validated_declaration
from .pdu import LoginRequest, LoginResponse, LoginStage
from .text import TextAssembler, decode_text, encode_text

_STATUS_REDIRECT = 0x01


class LoginState(enum.Enum):
    SECURITY = "security negotiation"
    OPERATIONAL = "operational negotiation"
    FULL_FEATURE = "full-feature phase"
    FAILED = "failed"


class _AuthStep(enum.Enum):
    AUTH_METHOD_OFFERED = enum.auto()
    CHAP_ALGORITHM_OFFERED = enum.auto()
    CHAP_RESPONSE_SENT = enum.auto()
    AUTHENTICATED = enum.auto()


# (current state, the stage the target moves to with T=1) -> the state we are then in.
_STAGE_TRANSITIONS: dict[tuple[LoginState, LoginStage], LoginState] = {
    (LoginState.SECURITY, LoginStage.LOGIN_OPERATIONAL_NEGOTIATION): LoginState.OPERATIONAL,
    (LoginState.SECURITY, LoginStage.FULL_FEATURE_PHASE): LoginState.FULL_FEATURE,
    (LoginState.OPERATIONAL, LoginStage.FULL_FEATURE_PHASE): LoginState.FULL_FEATURE,
}

_STAGE_OF = {
    LoginState.SECURITY: LoginStage.SECURITY_NEGOTIATION,
    LoginState.OPERATIONAL: LoginStage.LOGIN_OPERATIONAL_NEGOTIATION,
}


def random_isid(rng: Callable[[int], bytes]) -> int:
    """A 'random' format ISID (RFC 7143 section 11.12.5: T=10b, A=0, B and C random, D=0)."""
    return (0x80 << 40) | (int.from_bytes(rng(3), "big") << 16)


class Login:
    """One login exchange; :meth:`start` gives the first request, :meth:`receive` the next."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        initiator_task_tag: int,
        cmd_sn: int,
        rng: Callable[[int], bytes],
    ) -> None:
        self.config = config
        self.initiator_task_tag = initiator_task_tag
        self.cmd_sn = cmd_sn
        self.exp_stat_sn = 0
        self.state = LoginState.SECURITY if config.chap is not None else LoginState.OPERATIONAL
        self._negotiator = Negotiator(config.proposals(), session_type=config.session_type)
        self._chap = (
            ChapInitiator(config.chap, config.chap_algorithms, rng=rng)
            if config.chap is not None
            else None
        )
        self._auth_step = _AuthStep.AUTH_METHOD_OFFERED
        self._assembler = TextAssembler()
        self._operational_offered = False
        self._target_portal_group_tag: int | None = None
        self._target_alias: str | None = None

    # -- requests

    def _request(
        self, pairs: list[tuple[str, str]], *, transit: bool, next_stage: LoginStage
    ) -> LoginRequest:
        return LoginRequest(
            transit=transit,
            current_stage=_STAGE_OF[self.state],
            next_stage=next_stage,
            isid=self.config.isid,
            tsih=self.config.tsih,
            initiator_task_tag=self.initiator_task_tag,
            cid=self.config.cid,
            cmd_sn=self.cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            data=encode_text(pairs),
        )

    def _leading_keys(self) -> list[tuple[str, str]]:
        """Declarations that only the first request of a leading login carries."""
        cfg = self.config
        pairs = [("InitiatorName", cfg.initiator_name)]
        if cfg.initiator_alias:
            pairs.append(("InitiatorAlias", cfg.initiator_alias))
        pairs.append(("SessionType", cfg.session_type))
        if cfg.target_name is not None:
            pairs.append(("TargetName", cfg.target_name))
        return pairs

    def start(self) -> LoginRequest:
        """The first Login Request (RFC 7143 section 6.3)."""
        pairs = self._leading_keys()
        if self.state is LoginState.SECURITY:
            pairs.append(("AuthMethod", "CHAP"))
            return self._request(pairs, transit=False, next_stage=LoginStage.SECURITY_NEGOTIATION)
        return self._operational_request(pairs)

    def _operational_request(self, pairs: list[tuple[str, str]]) -> LoginRequest:
        if not self._operational_offered:
            pairs = pairs + self._negotiator.offers()
            self._operational_offered = True
        return self._request(pairs, transit=True, next_stage=LoginStage.FULL_FEATURE_PHASE)

    # -- responses

    def receive(self, pdu: LoginResponse) -> tuple[LoginRequest | None, Event | None]:
        """Feed one Login Response: returns the next request to send and/or a final event."""
        try:
            return self._receive(pdu)
        except (AuthenticationError, NegotiationError) as exc:
            self.state = LoginState.FAILED
            return None, LoginFailed(exc)

    def _receive(self, pdu: LoginResponse) -> tuple[LoginRequest | None, Event | None]:
        if self.state in (LoginState.FULL_FEATURE, LoginState.FAILED):
            raise TargetProtocolError(
                f"Login Response received after the login ended ({self.state.value})"
            )
        if pdu.initiator_task_tag != self.initiator_task_tag:
            raise TargetProtocolError(
                f"Login Response for task tag 0x{pdu.initiator_task_tag:08x}, "
                f"expected 0x{self.initiator_task_tag:08x}"
            )
        self.exp_stat_sn = (pdu.stat_sn + 1) & 0xFFFFFFFF
        if pdu.status_class != 0:
            self.state = LoginState.FAILED
            return None, self._failure(pdu)
        if pdu.version_active != 0:
            raise TargetProtocolError(f"target chose iSCSI version {pdu.version_active}, not 0")
        if pdu.isid != self.config.isid:
            raise TargetProtocolError(f"Login Response carries ISID 0x{pdu.isid:012x}, not ours")
        if pdu.current_stage is not _STAGE_OF[self.state]:
            raise TargetProtocolError(
                f"Login Response is for stage {pdu.current_stage.name}, we are in "
                f"{self.state.value}"
            )
        if pdu.transit and pdu.continue_:
            raise TargetProtocolError("Login Response has both the T and the C bit set (11.13.2)")
        pairs = self._assembler.add(pdu.data, more=pdu.continue_)
        if pairs is None:  # more text follows: ask for it with an empty request (11.13.3)
            return self._request([], transit=False, next_stage=_STAGE_OF[self.state]), None
        self._record_declarations(pairs)
        if self.state is LoginState.SECURITY:
            reply = self._security(pairs, pdu)
        else:
            reply = self._negotiator.receive(pairs)
        if pdu.transit:
            self.state = self._advanced(pdu.next_stage)
        if self.state is LoginState.FULL_FEATURE:
            if reply:
                raise NegotiationError(
                    f"target ended the login while offering {', '.join(k for k, _ in reply)}"
                )
            return None, self._completed(pdu)
        if self.state is LoginState.SECURITY:
            # The CHAP response goes with T=1, as open-iscsi sends it: a target that accepts
            # it moves to the operational stage at once instead of costing a round trip.
            transit = self._auth_step in (_AuthStep.CHAP_RESPONSE_SENT, _AuthStep.AUTHENTICATED)
            stage = LoginStage.LOGIN_OPERATIONAL_NEGOTIATION
            return self._request(reply, transit=transit, next_stage=stage), None
        return self._operational_request(reply), None

    def _security(self, pairs: list[tuple[str, str]], pdu: LoginResponse) -> list[tuple[str, str]]:
        keys = dict(pairs)
        assert self._chap is not None
        step = self._auth_step
        if step is _AuthStep.AUTH_METHOD_OFFERED:
            method = keys.get("AuthMethod")
            if method != "CHAP":
                raise AuthenticationError(
                    f"target answered AuthMethod={method or '(nothing)'} to our offer of CHAP: "
                    "it is not set up for CHAP, or the credentials belong to another target"
                )
            self._auth_step = _AuthStep.CHAP_ALGORITHM_OFFERED
            return self._chap.offer()
        if step is _AuthStep.CHAP_ALGORITHM_OFFERED:
            self._auth_step = _AuthStep.CHAP_RESPONSE_SENT
            return self._chap.respond(keys)
        if step is _AuthStep.CHAP_RESPONSE_SENT:
            if self._chap.mutual:
                self._chap.verify(keys)
            self._auth_step = _AuthStep.AUTHENTICATED
            return []
        return []

    def _advanced(self, next_stage: LoginStage) -> LoginState:
        if self.state is LoginState.SECURITY and self._auth_step is not _AuthStep.AUTHENTICATED:
            if self._auth_step is _AuthStep.CHAP_RESPONSE_SENT:
                raise TargetProtocolError("target left the security stage without finishing CHAP")
            raise AuthenticationError("target skipped authentication that we asked for")
        new = _STAGE_TRANSITIONS.get((self.state, next_stage))
        if new is None:
            raise TargetProtocolError(
                f"target may not move from {self.state.value} to stage {next_stage.name}"
            )
        return new

    def _record_declarations(self, pairs: list[tuple[str, str]]) -> None:
        """Keep what the target declares in any stage; the security stage's keys reach no
        negotiator, so they are checked here with the negotiator's own rule (a value out
        of range ends the login with a :class:`TargetNegotiationError`, as it does in the
        operational stage)."""
        for key, value in pairs:
            if key == "TargetPortalGroupTag":
                tag = validated_declaration(KEYS[key], value)
                self._target_portal_group_tag = int(tag)
            elif key == "TargetAlias":
                self._target_alias = validated_declaration(KEYS[key], value)

    def _failure(self, pdu: LoginResponse) -> Event:
        pairs = decode_text(pdu.data) if len(pdu.data) else []
        keys = dict(pairs)
        if pdu.status_class == _STATUS_REDIRECT:
            address = keys.get("TargetAddress")
            if address is None:
                raise TargetProtocolError("login redirect without a TargetAddress")
            portal = parse_target_address(address)
            return LoginRedirected(portal.address, portal.port, permanent=pdu.status_detail == 2)
        error: ISCSIError = login_error_for(pdu.status_class, pdu.status_detail)
        return LoginFailed(error)

    def _completed(self, pdu: LoginResponse) -> LoginCompleted:
        # A key the target left unanswered keeps its RFC default (the negotiator checks that
        # the default is acceptable to us), as open-iscsi does.
        if self.config.tsih == 0 and pdu.tsih == 0 and self.config.target_name is not None:
            raise TargetProtocolError("final Login Response of a new session has TSIH 0")
        params: SessionParameters = self._negotiator.parameters()
        return LoginCompleted(
            parameters=params,
            tsih=pdu.tsih,
            target_portal_group_tag=self._target_portal_group_tag
            if self._target_portal_group_tag is not None
            else params.target_portal_group_tag,
            target_alias=self._target_alias or params.target_alias,
        )
