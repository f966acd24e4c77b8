"""The initiator's side of a text negotiation (RFC 7143 sections 6.2 and 6.3).

One :class:`Negotiator` runs one negotiation: the keys of a login (security and operational
stages) or of a Text Request sequence in full feature phase. It is sans-IO: the login state
machine feeds it the target's decoded pairs and sends what it returns. Every rule comes from
the table in :mod:`.keys`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import InitiatorProtocolError, NegotiationError, TargetProtocolError
from .keys import (
    IRRELEVANT,
    KEYS,
    NOT_UNDERSTOOD,
    REJECT,
    RESERVED_VALUES,
    InvalidValue,
    KeySpec,
    KeyType,
    KeyUse,
    Phase,
    ResultRule,
    Sender,
)
from .text import is_valid_key_name


class TargetNegotiationError(NegotiationError, TargetProtocolError):
    """The target broke the negotiation rules of RFC 7143 section 6.2: drop the connection."""


class InvalidProposal(NegotiationError, InitiatorProtocolError):
    """One of our own proposals is wrong: a configuration mistake, named by its key."""


@dataclass(frozen=True, slots=True)
class SessionParameters:
    """What a session and its connection run with once the login is over (RFC 7143 section 13).

    The two MaxRecvDataSegmentLength values are declarations, one per direction
    (RFC 7143 section 13.12): ``initiator_...`` bounds what the target may send us in one PDU,
    ``target_...`` bounds what we may send; a target that never declares one (tgt) gets 8192.
    """

    header_digest: bool
    data_digest: bool
    max_connections: int
    initial_r2t: bool
    immediate_data: bool
    max_burst_length: int
    first_burst_length: int
    default_time2wait: int
    default_time2retain: int
    max_outstanding_r2t: int
    data_pdu_in_order: bool
    data_sequence_in_order: bool
    error_recovery_level: int
    initiator_max_recv_data_segment_length: int
    target_max_recv_data_segment_length: int
    target_alias: str | None = None
    target_portal_group_tag: int | None = None
    task_reporting: str = "RFC3720"

    @classmethod
    def defaults(cls) -> SessionParameters:
        """The RFC 7143 defaults, what holds before (or without) any negotiation."""
        return _parameters({}, {}, None)


def _parameters(
    values: Mapping[str, str], declared: Mapping[str, str], ours: str | None
) -> SessionParameters:
    def get(name: str) -> str:
        value = values.get(name, KEYS[name].default)
        assert value is not None
        return value

    def number(name: str) -> int:
        return int(get(name))

    default_length = KEYS["MaxRecvDataSegmentLength"].default
    assert default_length is not None
    tag = declared.get("TargetPortalGroupTag")
    return SessionParameters(
        header_digest=get("HeaderDigest") == "CRC32C",
        data_digest=get("DataDigest") == "CRC32C",
        max_connections=number("MaxConnections"),
        initial_r2t=get("InitialR2T") == "Yes",
        immediate_data=get("ImmediateData") == "Yes",
        max_burst_length=number("MaxBurstLength"),
        first_burst_length=min(number("FirstBurstLength"), number("MaxBurstLength")),
        default_time2wait=number("DefaultTime2Wait"),
        default_time2retain=number("DefaultTime2Retain"),
        max_outstanding_r2t=number("MaxOutstandingR2T"),
        data_pdu_in_order=get("DataPDUInOrder") == "Yes",
        data_sequence_in_order=get("DataSequenceInOrder") == "Yes",
        error_recovery_level=number("ErrorRecoveryLevel"),
        initiator_max_recv_data_segment_length=int(ours or default_length),
        target_max_recv_data_segment_length=int(
            declared.get("MaxRecvDataSegmentLength", default_length)
        ),
        target_alias=declared.get("TargetAlias"),
        target_portal_group_tag=None if tag is None else int(tag),
        task_reporting=get("TaskReporting"),
    )


def validated_declaration(spec: KeySpec, value: str) -> str:
    """A target's declaration in canonical form, checked against the key's type and range
    (TargetPortalGroupTag 0..65535, RFC 7143 section 13.9); the login uses it in every
    stage, the security stage included, where no negotiator sees the keys."""
    try:
        return spec.validate(value)
    except InvalidValue as exc:
        raise TargetNegotiationError(exc.reason, key=spec.name) from None


def _answer_optional(spec: KeySpec, offered: str) -> bool:
    """An offer whose value alone fixes the result needs no answer (RFC 7143 section 6.2.2)."""
    return (spec.rule is ResultRule.AND and offered == "No") or (
        spec.rule is ResultRule.OR and offered == "Yes"
    )


def _acceptable(spec: KeySpec, offered: str, result: str) -> bool:
    """Could ``result`` come out of our offer under the key's result function?"""
    match spec.rule:
        case ResultRule.FIRST_MATCH:
            return result in offered.split(",")
        case ResultRule.AND:
            return offered == "Yes" or result == "No"
        case ResultRule.OR:
            return offered == "No" or result == "Yes"
        case ResultRule.MIN:
            return int(result) <= int(offered)
        case ResultRule.MAX:
            return int(result) >= int(offered)
        case ResultRule.DECLARATIVE:
            return True


class Negotiator:
    """Offers our keys, checks the target's answers, answers the target's offers.

    ``proposals`` are our values: what we offer for negotiated keys and what we declare
    (InitiatorName, SessionType, TargetName, MaxRecvDataSegmentLength...). Keys that do not
    apply are dropped: those irrelevant to a Discovery session and, on a non-leading
    connection, the leading-only ones (RFC 7143 section 13). ``session_type`` gives the session
    type when the caller declares SessionType itself rather than through ``proposals``.
    ``full_feature`` makes this a Text negotiation of the full feature phase, where only "ALL"
    and "FFPO" keys may appear.
    """

    def __init__(
        self,
        proposals: Mapping[str, str],
        *,
        session_type: str | None = None,
        leading: bool = True,
        full_feature: bool = False,
    ) -> None:
        self.leading = leading
        self.full_feature = full_feature
        validated = {
            name: self._validate_proposal(name, value) for name, value in proposals.items()
        }
        declared = validated.get("SessionType")
        if session_type is not None:
            session_type = self._validate_proposal("SessionType", session_type)
            if declared is not None and declared != session_type:
                raise InvalidProposal(
                    f"proposals say {declared}, session_type says {session_type}",
                    key="SessionType",
                )
        self.session_type = session_type or declared or "Normal"
        self.discovery = self.session_type == "Discovery"
        self.dropped: dict[str, str] = {}
        """Proposals left out because they do not apply to this session or connection."""
        if (
            self._determined(validated, "InitialR2T", "Yes")
            and self._determined(validated, "ImmediateData", "No")
            and "FirstBurstLength" in validated
        ):
            # RFC 7143 section 13.14: FirstBurstLength is irrelevant, whatever the target says.
            self.dropped["FirstBurstLength"] = validated.pop("FirstBurstLength")
        first, most = validated.get("FirstBurstLength"), validated.get("MaxBurstLength")
        if first is not None and most is not None and int(first) > int(most):
            raise InvalidProposal(
                f"{first} exceeds MaxBurstLength={most} (RFC 7143 section 13.14)",
                key="FirstBurstLength",
            )
        self._proposals: dict[str, str] = {}
        for spec in KEYS.values():
            if spec.name in validated:
                if self._applies(spec):
                    self._proposals[spec.name] = validated[spec.name]
                else:
                    self.dropped[spec.name] = validated[spec.name]
        self._to_offer = dict(self._proposals)
        self._offered: dict[str, str] = {}
        self._results: dict[str, str] = {}
        self._declined: dict[str, str] = {}
        self._declared: dict[str, str] = {}
        self._answered: dict[str, str] = {}
        self._received: set[str] = set()

    # --- our proposals ---------------------------------------------------------------------

    def _validate_proposal(self, name: str, value: str) -> str:
        spec = KEYS.get(name)
        if spec is None:
            raise InvalidProposal("not a key this initiator knows how to negotiate", key=name)
        if spec.obsolete:
            raise InvalidProposal("obsoleted by RFC 7143 (section 13.26), never offered", key=name)
        if spec.use is KeyUse.SECURITY and name != "AuthMethod":
            raise InvalidProposal("CHAP keys belong to the CHAP exchange, not here", key=name)
        if spec.sender is Sender.TARGET:
            raise InvalidProposal("only a target sends this key", key=name)
        if self.full_feature and not spec.allowed_in(Phase.FULL_FEATURE):
            raise InvalidProposal("cannot be negotiated in full feature phase", key=name)
        try:
            return spec.validate(value)
        except InvalidValue as exc:
            raise InvalidProposal(exc.reason, key=name) from None

    @staticmethod
    def _determined(values: Mapping[str, str], name: str, result: str) -> bool:
        """Our offer alone fixes the result to ``result`` (an OR with Yes, an AND with No)."""
        return values.get(name) == result and _answer_optional(KEYS[name], result)

    def _applies(self, spec: KeySpec) -> bool:
        """Does the key mean anything in this negotiation (session type, connection, phase)?"""
        if self.discovery and not spec.discovery:
            return False
        if self.full_feature:
            return spec.allowed_in(Phase.FULL_FEATURE)
        return spec.allowed_in(Phase.SECURITY, leading=self.leading) or spec.allowed_in(
            Phase.OPERATIONAL, leading=self.leading
        )

    def offers(self, phase: Phase | None = None) -> list[tuple[str, str]]:
        """Our offers and declarations not sent yet, in table order, now counted as sent.

        With ``phase``, only the keys allowed there: a login with CHAP sends the declarations
        and AuthMethod in the security stage and the rest in the operational stage
        (RFC 7143 section 6.3). A key the target offered first is answered, not offered.
        """
        out: list[tuple[str, str]] = []
        for name, value in list(self._to_offer.items()):
            if phase is not None and not KEYS[name].allowed_in(phase, leading=self.leading):
                continue
            del self._to_offer[name]
            self._offered[name] = value
            out.append((name, value))
        return out

    # --- the target's text ------------------------------------------------------------------

    def receive(
        self, pairs: Sequence[tuple[str, str]], phase: Phase | None = None
    ) -> list[tuple[str, str]]:
        """Take the target's complete set of keys from one response; return our answers.

        Answers to our offers are checked against the key's result function; the target's own
        offers are answered by the same function from our proposal or the RFC default;
        declarations are recorded; unknown and private (X-, X#) keys are NotUnderstood; the
        obsolete markers are Rejected. CHAP keys are skipped: chap.py reads them. With
        ``phase``, a key not allowed in that login stage is an error (RFC 7143 section 6.3).
        """
        answers: list[tuple[str, str]] = []
        # FirstBurstLength last: it may be irrelevant given InitialR2T and ImmediateData.
        for name, value in sorted(pairs, key=lambda pair: pair[0] == "FirstBurstLength"):
            answer = self._receive_one(name, value, phase)
            if answer is not None:
                answers.append((name, answer))
        return answers

    def _receive_one(self, name: str, value: str, phase: Phase | None) -> str | None:
        if not is_valid_key_name(name):
            raise TargetNegotiationError(f"malformed key name {name[:70]!r}")
        spec = KEYS.get(name)
        if spec is not None and spec.use is KeyUse.SECURITY and name != "AuthMethod":
            if self.full_feature or phase not in (None, Phase.SECURITY):
                where = "full feature phase" if self.full_feature else "the operational stage"
                raise TargetNegotiationError(f"a security key in {where}", key=name)
            return None  # CHAP_A, CHAP_I, CHAP_C, CHAP_N, CHAP_R: for the CHAP exchange
        self._check_repeat(spec, name, value)
        if spec is None:
            if value in RESERVED_VALUES:
                raise TargetNegotiationError(f"{value} answers a key we never sent", key=name)
            return NOT_UNDERSTOOD  # RFC 7143 section 6.2; private X- and X# keys alike
        self._check_allowed(spec, phase)
        if spec.obsolete:
            if value in RESERVED_VALUES:
                raise TargetNegotiationError(f"{value} answers a key we never sent", key=name)
            return REJECT  # RFC 7143 section 13.26
        if spec.declarative:
            self._receive_declaration(spec, value)
            return None
        if name in self._offered:
            self._receive_answer(spec, self._offered[name], value)
            return None
        return self._answer_offer(spec, value)

    def _check_repeat(self, spec: KeySpec | None, name: str, value: str) -> None:
        """RFC 7143 section 6.2: a key is negotiated or declared once per negotiation."""
        if name not in self._received:
            self._received.add(name)
            return
        if spec is not None and spec.repeatable:
            return
        if spec is not None and spec.declarative and self._declared.get(name) == value:
            return  # the same declaration again (a TargetAlias in both stages): harmless
        raise TargetNegotiationError(
            f"sent twice in one negotiation (now {value[:40]!r}), RFC 7143 section 6.2", key=name
        )

    def _check_allowed(self, spec: KeySpec, phase: Phase | None) -> None:
        if self.full_feature and not spec.allowed_in(Phase.FULL_FEATURE):
            raise TargetNegotiationError("not allowed in full feature phase", key=spec.name)
        if not self.full_feature and spec.use is KeyUse.FULL_FEATURE_ONLY:
            raise TargetNegotiationError("allowed only in full feature phase", key=spec.name)
        if not self.leading and spec.use is KeyUse.LEADING_ONLY:
            raise TargetNegotiationError(
                "leading-only key on a non-leading connection", key=spec.name
            )
        if phase is not None and not spec.allowed_in(phase, leading=self.leading):
            raise TargetNegotiationError(f"not allowed in the {phase.value} stage", key=spec.name)

    def _receive_declaration(self, spec: KeySpec, value: str) -> None:
        name = spec.name
        if value in RESERVED_VALUES:
            if name not in self._offered:
                raise TargetNegotiationError(f"{value} answers a key we never sent", key=name)
            self._declined[name] = value  # e.g. X#NodeArchitecture=NotUnderstood
            return
        if spec.sender is Sender.INITIATOR:
            raise TargetNegotiationError("only the initiator may send this key", key=name)
        self._declared[name] = validated_declaration(spec, value)

    def _receive_answer(self, spec: KeySpec, offered: str, value: str) -> None:
        """Check the target's answer to our offer against the result function (section 6.2)."""
        name = spec.name
        if value in RESERVED_VALUES:
            self._declined[name] = value
            if value == IRRELEVANT and self._may_be_irrelevant(name):
                return
            # The key keeps its current value, here the default (RFC 7143 section 6.2).
            default = spec.default
            assert default is not None
            if not _acceptable(spec, offered, default):
                raise NegotiationError(
                    f"the target answered {value} to {offered}; the default {default} does "
                    f"not fit our offer",
                    key=name,
                )
            return
        if self._may_be_irrelevant(name):
            self._declined[name] = IRRELEVANT  # any value will do (RFC 7143 section 13.14)
            return
        if spec.type is KeyType.LIST and "," in value:
            raise TargetNegotiationError(f"answered a list {value!r}, not one value", key=name)
        try:
            result = spec.validate(value)
        except InvalidValue as exc:
            raise TargetNegotiationError(f"bad answer: {exc.reason}", key=name) from None
        if not _acceptable(spec, offered, result):
            raise TargetNegotiationError(
                f"answered {result} to our offer {offered}, which the {spec.rule.value} "
                f"result function does not allow (RFC 7143 section {spec.section})",
                key=name,
            )
        self._results[name] = result

    def _answer_offer(self, spec: KeySpec, value: str) -> str:
        """Our answer to a key the target offered first (RFC 7143 sections 6.2.1, 6.2.2)."""
        name = spec.name
        if value in RESERVED_VALUES:
            raise TargetNegotiationError(f"{value} answers a key we never sent", key=name)
        if not self._applies(spec) or self._may_be_irrelevant(name):
            self._answered[name] = IRRELEVANT
            return IRRELEVANT
        ours = self._to_offer.pop(name, None) or spec.default
        assert ours is not None
        if spec.rule is ResultRule.FIRST_MATCH:
            acceptable = ours.split(",")
            chosen = next((item for item in value.split(",") if item in acceptable), None)
            if chosen is None:
                if spec.default is None or spec.default not in acceptable:
                    raise NegotiationError(
                        f"none of the target's values {value!r} is acceptable (ours: {ours})",
                        key=name,
                    )
                self._answered[name] = REJECT  # the default stands
                return REJECT
            result = chosen
        else:
            try:
                theirs = spec.parse(value)
            except InvalidValue as exc:
                raise TargetNegotiationError(f"bad offer: {exc.reason}", key=name) from None
            mine = spec.parse(ours)
            assert isinstance(theirs, int) and isinstance(mine, int)  # bool is an int too
            match spec.rule:
                case ResultRule.AND:
                    result = spec.format(bool(theirs and mine))
                case ResultRule.OR:
                    result = spec.format(bool(theirs or mine))
                case ResultRule.MIN:
                    result = spec.format(min(theirs, mine))
                case _:
                    result = spec.format(max(theirs, mine))
        self._results[name] = result
        self._answered[name] = result
        return result

    def _may_be_irrelevant(self, name: str) -> bool:
        """Irrelevant given what is agreed so far: FirstBurstLength with InitialR2T=Yes and
        ImmediateData=No (RFC 7143 section 13.14), or a key a Discovery session ignores."""
        if self.discovery and not KEYS[name].discovery:
            return True
        return (
            name == "FirstBurstLength"
            and self._current("InitialR2T") == "Yes"
            and self._current("ImmediateData") == "No"
        )

    def _current(self, name: str) -> str:
        """The value as far as it is known now, without judging unanswered offers."""
        if name in self._results:
            return self._results[name]
        offered = self._offered.get(name)
        if offered is not None and _answer_optional(KEYS[name], offered):
            return offered
        default = KEYS[name].default
        assert default is not None
        return default

    # --- state and results ------------------------------------------------------------------

    def pending(self) -> set[str]:
        """Offered keys still waiting for the target's answer.

        Declarations need none, nor an offer whose value fixes the result on its own (AND with
        No, OR with Yes: RFC 7143 section 6.2.2), nor a key that has become irrelevant.
        """
        return {
            name
            for name, offered in self._offered.items()
            if not KEYS[name].declarative
            and name not in self._results
            and name not in self._declined
            and not _answer_optional(KEYS[name], offered)
            and not self._may_be_irrelevant(name)
        }

    @property
    def complete(self) -> bool:
        """Every offer sent so far is answered: the login may ask for the next stage."""
        return not self.pending()

    @property
    def declined(self) -> Mapping[str, str]:
        """Our offers the target answered with NotUnderstood, Reject or Irrelevant."""
        return dict(self._declined)

    @property
    def answered(self) -> Mapping[str, str]:
        """Our answers to the keys the target offered first."""
        return dict(self._answered)

    def declarations(self) -> dict[str, str]:
        """What the target declared: TargetAlias, TargetPortalGroupTag, its
        MaxRecvDataSegmentLength, TargetAddress (the last one when repeated)."""
        return dict(self._declared)

    def values(self) -> dict[str, str]:
        """The agreed value of every negotiated key of this negotiation, the RFC 7143 default
        where the key was not negotiated; FirstBurstLength clipped to MaxBurstLength (13.14).

        An offer the target never answered keeps the default (tgt leaves out keys whose result
        is the default): NegotiationError when the default is outside what we offered.
        """
        out: dict[str, str] = {}
        for spec in KEYS.values():
            if spec.declarative or spec.obsolete or spec.default is None:
                continue
            if spec.use is KeyUse.SECURITY and spec.name != "AuthMethod":
                continue
            if self._applies(spec):
                out[spec.name] = self._settled(spec)
        if "FirstBurstLength" in out and "MaxBurstLength" in out:
            first, most = int(out["FirstBurstLength"]), int(out["MaxBurstLength"])
            out["FirstBurstLength"] = str(min(first, most))
        return out

    def _settled(self, spec: KeySpec) -> str:
        name = spec.name
        value = self._current(name)
        offered = self._offered.get(name)
        if name in self._results or offered is None or name in self._declined:
            return value  # declined keys were judged when the answer came
        if not _acceptable(spec, offered, value) and not self._may_be_irrelevant(name):
            raise NegotiationError(
                f"the target never answered our offer {offered}, and the default {value} "
                f"does not fit it",
                key=name,
            )
        return value

    def parameters(self) -> SessionParameters:
        """The typed result for the connection; defaults for keys this negotiation lacks."""
        return _parameters(
            self.values(), self._declared, self._proposals.get("MaxRecvDataSegmentLength")
        )
