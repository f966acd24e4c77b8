"""The settings table: open-iscsi's defaults, validation messages that name the key, secrets
that stay hidden, and the mapping to the protocol core's ConnectionConfig."""

from __future__ import annotations

import pytest
from pyiscsid.daemon import settings
from pyiscsid.daemon.settings import (
    MASK,
    InvalidSetting,
    Kind,
    Scope,
    connection_config,
    is_secret,
    mask,
    validate,
)
from pyiscsid.protocol.chap import DEFAULT_CHAP_ALGORITHMS, ChapAlgorithm
from pyiscsid.protocol.errors import ISCSIError

INITIATOR = "iqn.2026-11.org.example:host1"
TARGET = "iqn.2026-11.org.example:disk1"
ISID = 0x80_12_34_56_78_9A

# iscsid.conf as shipped by open-iscsi, for the keys pyiscsid copies.
OPEN_ISCSI_DEFAULTS = {
    "node.startup": "manual",
    "node.leading_login": "No",
    "node.session.timeo.replacement_timeout": "120",
    "node.session.initial_login_retry_max": "8",
    "node.session.cmds_max": "128",
    "node.session.queue_depth": "32",
    "node.session.iscsi.InitialR2T": "No",
    "node.session.iscsi.ImmediateData": "Yes",
    "node.session.iscsi.FirstBurstLength": "262144",
    "node.session.iscsi.MaxBurstLength": "16776192",
    "node.session.iscsi.DefaultTime2Wait": "2",
    "node.session.iscsi.DefaultTime2Retain": "0",
    "node.session.iscsi.MaxConnections": "1",
    "node.session.iscsi.MaxOutstandingR2T": "1",
    "node.session.iscsi.ERL": "0",
    "node.session.iscsi.FastAbort": "Yes",
    "node.session.err_timeo.abort_timeout": "15",
    "node.session.err_timeo.lu_reset_timeout": "30",
    "node.session.err_timeo.tgt_reset_timeout": "30",
    "node.conn[0].iscsi.MaxRecvDataSegmentLength": "262144",
    "node.conn[0].iscsi.HeaderDigest": "None",
    "node.conn[0].iscsi.DataDigest": "None",
    "node.conn[0].timeo.login_timeout": "15",
    "node.conn[0].timeo.logout_timeout": "15",
    "node.conn[0].timeo.noop_out_interval": "5",
    "node.conn[0].timeo.noop_out_timeout": "5",
    "node.conn[0].tcp.window_size": "524288",
    "node.session.auth.authmethod": "None",
    "discovery.sendtargets.auth.authmethod": "None",
    "discovery.sendtargets.timeo.login_timeout": "15",
    "discovery.sendtargets.iscsi.MaxRecvDataSegmentLength": "32768",
}


def chap_settings(**extra: str) -> dict[str, str]:
    values = {
        "node.session.auth.authmethod": "CHAP",
        "node.session.auth.username": "alice",
        "node.session.auth.password": "alice-secret-1",
    }
    values.update({f"node.session.auth.{k}": v for k, v in extra.items()})
    return values


# -- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "default"), sorted(OPEN_ISCSI_DEFAULTS.items()))
def test_defaults_are_open_iscsi_s(key: str, default: str) -> None:
    assert settings.SETTINGS[key].default == default


def test_chap_algs_default_leaves_out_sha256_for_tgt() -> None:
    default = settings.SETTINGS["node.session.auth.chap_algs"].default
    assert default == "SHA3-256,SHA1,MD5"
    assert default == ",".join(a.label for a in DEFAULT_CHAP_ALGORITHMS)
    assert "SHA256" not in default.split(",")


def test_every_default_validates_to_itself() -> None:
    for key, spec in settings.SETTINGS.items():
        assert validate(key, spec.default) == spec.default, key


def test_scopes_split_the_table() -> None:
    assert set(settings.NODE_KEYS) | set(settings.DISCOVERY_KEYS) | set(
        settings.DAEMON_KEYS
    ) == set(settings.SETTINGS)
    assert all(k.startswith(("node.", "iface.")) for k in settings.NODE_KEYS)
    assert "iface.initiatorname" in settings.NODE_KEYS  # a node record's own iface key
    assert all(k.startswith("discovery.") for k in settings.DISCOVERY_KEYS)
    assert "control.group" in settings.DAEMON_KEYS
    assert settings.defaults(Scope.DAEMON)["control.group"] == ""


def test_secrets_are_the_passwords() -> None:
    secrets = {k for k in settings.SETTINGS if is_secret(k)}
    assert secrets == {
        "node.session.auth.password",
        "node.session.auth.password_in",
        "discovery.sendtargets.auth.password",
        "discovery.sendtargets.auth.password_in",
    }
    assert not is_secret("node.session.auth.username")
    assert not is_secret("no.such.key")


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "canonical"),
    [
        ("node.startup", "Automatic", "automatic"),
        ("node.startup", " onboot ", "onboot"),
        ("node.leading_login", "yes", "Yes"),
        ("node.session.auth.authmethod", "chap", "CHAP"),
        ("node.session.iscsi.FirstBurstLength", "+512", "512"),
        ("node.session.timeo.replacement_timeout", "-1", "-1"),
        ("node.conn[0].iscsi.HeaderDigest", "crc32c", "CRC32C"),
        ("node.conn[0].iscsi.DataDigest", "CRC32C , None", "CRC32C,None"),
        ("node.conn[0].iscsi.DataDigest", "None,CRC32C", "None,CRC32C"),
        ("node.session.auth.chap_algs", "md5 sha3-256,MD5", "MD5,SHA3-256"),
        ("node.session.auth.chap_algs", "SHA256", "SHA256"),
        ("node.session.auth.username", "<empty>", ""),
        (
            "node.session.auth.password",
            "p@ss = word # not a comment",
            "p@ss = word # not a comment",
        ),
        ("node.session.cmds_max", "2048", "2048"),
        ("control.group", "pyiscsi", "pyiscsi"),
        ("control.group", "", ""),
        ("log.level", "DEBUG", "debug"),
    ],
)
def test_validate_canonical(key: str, value: str, canonical: str) -> None:
    assert validate(key, value) == canonical


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("node.startup", "sometimes", "expected one of manual, automatic, onboot"),
        ("node.leading_login", "true", "expected Yes or No"),
        ("node.conn[0].timeo.noop_out_interval", "abc", "expected a whole number"),
        ("node.conn[0].timeo.noop_out_interval", "1.5", "expected a whole number"),
        ("node.conn[0].timeo.noop_out_interval", "-1", "expected a number from 0 to 3600"),
        ("node.conn[0].iscsi.MaxRecvDataSegmentLength", "511", "from 512 to 16777215"),
        ("node.session.iscsi.MaxBurstLength", "16777216", "from 512 to 16777215"),
        ("node.session.cmds_max", "100", "power of two"),
        ("node.session.cmds_max", "4096", "from 2 to 2048"),
        ("node.session.iscsi.ERL", "1", "ErrorRecoveryLevel 0 only"),
        ("node.session.iscsi.ERL", "3", "from 0 to 2"),
        ("node.session.iscsi.MaxConnections", "2", "exactly 1"),
        ("node.conn[0].iscsi.HeaderDigest", "CRC32", "expected None, CRC32C"),
        ("node.conn[0].iscsi.HeaderDigest", "CRC32C,CRC32C", "the same digest twice"),
        ("node.session.auth.chap_algs", "SHA512", "unknown CHAP algorithm"),
        ("node.session.auth.chap_algs", " ", "empty"),
        ("node.session.auth.username", " alice", "blank"),
        ("node.session.auth.username", "a" * 256, "longer than 255"),
        ("node.session.auth.username", "a\nb", "control characters"),
        ("control.group", "no such group", "group name"),
        ("node.session.xmit_thread_priority", "-20", "open-iscsi setting that pyiscsid"),
        ("node.sesion.auth.username", "x", "did you mean node.session.auth.username"),
    ],
)
def test_validation_error_names_the_key(key: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        validate(key, value)
    message = str(info.value)
    assert message.startswith(key)
    assert reason in message
    assert info.value.key == key
    assert isinstance(info.value, ISCSIError)


def test_number_error_shows_key_and_value_like_iscsiadm() -> None:
    with pytest.raises(InvalidSetting) as info:
        validate("node.conn[0].timeo.noop_out_interval", "abc")
    assert str(info.value) == "node.conn[0].timeo.noop_out_interval = abc: expected a whole number"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("node.session.auth.password", "hunter2\x00"),
        ("node.session.auth.password_in", " leading-blank"),
        ("discovery.sendtargets.auth.password", "x" * 300),
        # A mistyped key is not known to be secret: its value is never shown either.
        ("node.session.auth.pasword", "hunter2"),
    ],
)
def test_secret_values_never_appear_in_errors(key: str, value: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        validate(key, value)
    assert value.strip() not in str(info.value)
    assert "hunter2" not in str(info.value)
    assert info.value.value is None
    assert str(info.value).startswith(key)


def test_mask_hides_set_secrets_only() -> None:
    values = {
        "node.session.auth.username": "alice",
        "node.session.auth.password": "alice-secret-1",
        "node.session.auth.password_in": "",
    }
    shown = mask(values)
    assert shown == {
        "node.session.auth.username": "alice",
        "node.session.auth.password": MASK,
        "node.session.auth.password_in": "",
    }
    assert values["node.session.auth.password"] == "alice-secret-1"  # a copy


def test_get_and_get_int_fall_back_to_defaults() -> None:
    assert settings.get({}, "node.startup") == "manual"
    assert settings.get({"node.startup": "Automatic"}, "node.startup") == "automatic"
    assert settings.get_int({}, "node.conn[0].timeo.login_timeout") == 15
    assert settings.SETTINGS["node.conn[0].timeo.login_timeout"].kind is Kind.NUMBER
    with pytest.raises(TypeError):
        settings.get_int({}, "node.startup")


# -- connection_config ------------------------------------------------------------------------


def test_connection_config_defaults() -> None:
    config = connection_config({}, initiator_name=INITIATOR, target_name=TARGET, isid=ISID)
    assert config.initiator_name == INITIATOR
    assert config.target_name == TARGET
    assert config.session_type == "Normal"
    assert config.isid == ISID
    assert config.chap is None
    assert config.chap_algorithms == DEFAULT_CHAP_ALGORITHMS
    assert config.noop_out_interval == 5.0
    assert config.noop_out_timeout == 5.0
    assert dict(config.operational) == {
        "HeaderDigest": "None",
        "DataDigest": "None",
        "MaxRecvDataSegmentLength": "262144",
        "MaxBurstLength": "16776192",
        "FirstBurstLength": "262144",
        "ImmediateData": "Yes",
        "InitialR2T": "No",
        "DefaultTime2Wait": "2",
        "DefaultTime2Retain": "0",
        "MaxOutstandingR2T": "1",
        "ErrorRecoveryLevel": "0",
        "MaxConnections": "1",
    }


def test_connection_config_maps_digests_lengths_and_timers() -> None:
    values = {
        "node.conn[0].iscsi.HeaderDigest": "CRC32C",
        "node.conn[0].iscsi.DataDigest": "crc32c,none",
        "node.conn[0].iscsi.MaxRecvDataSegmentLength": "8192",
        "node.session.iscsi.FirstBurstLength": "65536",
        "node.session.iscsi.MaxBurstLength": "1048576",
        "node.session.iscsi.ImmediateData": "No",
        "node.session.iscsi.InitialR2T": "Yes",
        "node.session.iscsi.DefaultTime2Wait": "4",
        "node.session.iscsi.DefaultTime2Retain": "20",
        "node.session.iscsi.MaxOutstandingR2T": "4",
        "node.conn[0].timeo.noop_out_interval": "0",
        "node.conn[0].timeo.noop_out_timeout": "12",
    }
    config = connection_config(values, initiator_name=INITIATOR, target_name=TARGET, isid=ISID)
    ops = config.operational
    assert ops["HeaderDigest"] == "CRC32C"
    assert ops["DataDigest"] == "CRC32C,None"
    assert ops["MaxRecvDataSegmentLength"] == "8192"
    assert ops["FirstBurstLength"] == "65536"
    assert ops["MaxBurstLength"] == "1048576"
    assert ops["ImmediateData"] == "No"
    assert ops["InitialR2T"] == "Yes"
    assert ops["DefaultTime2Wait"] == "4"
    assert ops["DefaultTime2Retain"] == "20"
    assert ops["MaxOutstandingR2T"] == "4"
    assert config.noop_out_interval == 0.0
    assert config.noop_out_timeout == 12.0
    assert config.proposals()["HeaderDigest"] == "CRC32C"


def test_connection_config_one_way_chap() -> None:
    values = chap_settings(chap_algs="MD5")
    config = connection_config(values, initiator_name=INITIATOR, target_name=TARGET, isid=ISID)
    assert config.chap is not None
    assert config.chap.username == "alice"
    assert config.chap.secret == b"alice-secret-1"
    assert not config.chap.mutual
    assert config.chap_algorithms == (ChapAlgorithm.MD5,)
    assert "alice-secret-1" not in repr(config)


def test_connection_config_mutual_chap() -> None:
    values = chap_settings(username_in="disk1", password_in="target-secret-2")
    config = connection_config(values, initiator_name=INITIATOR, target_name=TARGET, isid=ISID)
    assert config.chap is not None
    assert config.chap.mutual
    assert config.chap.username_in == "disk1"
    assert config.chap.secret_in == b"target-secret-2"


def test_chap_ignored_when_authmethod_is_none() -> None:
    values = chap_settings(authmethod="None")
    config = connection_config(values, initiator_name=INITIATOR, target_name=TARGET, isid=ISID)
    assert config.chap is None


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"node.session.auth.authmethod": "CHAP"}, "node.session.auth.username"),
        (chap_settings(password=""), "node.session.auth.password"),
        (chap_settings(username_in="disk1"), "node.session.auth.password_in"),
        (chap_settings(password_in="target-secret-2"), "node.session.auth.username_in"),
        (
            chap_settings(username_in="disk1", password_in="alice-secret-1"),
            "node.session.auth.password_in",
        ),
    ],
)
def test_incomplete_chap_says_which_key_to_set(values: dict[str, str], key: str) -> None:
    with pytest.raises(InvalidSetting) as info:
        connection_config(values, initiator_name=INITIATOR, target_name=TARGET, isid=ISID)
    assert info.value.key == key
    assert key in str(info.value)
    assert "alice-secret-1" not in str(info.value)
    assert "target-secret-2" not in str(info.value)


def test_connection_config_bad_value_in_settings_is_reported() -> None:
    with pytest.raises(InvalidSetting, match=r"HeaderDigest = MD5"):
        connection_config(
            {"node.conn[0].iscsi.HeaderDigest": "MD5"},
            initiator_name=INITIATOR,
            target_name=TARGET,
            isid=ISID,
        )


def test_discovery_config_uses_discovery_keys() -> None:
    values = {
        # Node CHAP must not leak into discovery sessions.
        **chap_settings(),
        "discovery.sendtargets.auth.authmethod": "CHAP",
        "discovery.sendtargets.auth.username": "disco",
        "discovery.sendtargets.auth.password": "disco-secret-3",
        "discovery.sendtargets.auth.chap_algs": "SHA1,MD5",
    }
    config = connection_config(values, initiator_name=INITIATOR, target_name=None, isid=ISID)
    assert config.session_type == "Discovery"
    assert config.chap is not None
    assert config.chap.username == "disco"
    assert config.chap.secret == b"disco-secret-3"
    assert config.chap_algorithms == (ChapAlgorithm.SHA1, ChapAlgorithm.MD5)
    assert dict(config.operational) == {"MaxRecvDataSegmentLength": "32768"}


def test_discovery_chap_missing_password_names_the_discovery_key() -> None:
    values = {
        "discovery.sendtargets.auth.authmethod": "CHAP",
        "discovery.sendtargets.auth.username": "disco",
    }
    with pytest.raises(InvalidSetting) as info:
        connection_config(values, initiator_name=INITIATOR, target_name=None, isid=ISID)
    assert info.value.key == "discovery.sendtargets.auth.password"


def test_discovery_connection_config_is_the_same_mapping() -> None:
    values = {"discovery.sendtargets.iscsi.MaxRecvDataSegmentLength": "8192"}
    config = settings.discovery_connection_config(values, initiator_name=INITIATOR, isid=ISID)
    assert config == connection_config(
        values, initiator_name=INITIATOR, target_name=None, isid=ISID
    )
    assert config.operational["MaxRecvDataSegmentLength"] == "8192"


def test_a_node_initiator_name_overrides_the_daemons_and_must_be_valid() -> None:
    node = {"iface.initiatorname": "iqn.2026-11.org.example:boot-host"}
    config = settings.connection_config(
        node, initiator_name="iqn.2005-03.org.pyiscsid:daemon", target_name="iqn.t:x", isid=1
    )
    assert config.initiator_name == "iqn.2026-11.org.example:boot-host"
    default = settings.connection_config(
        {}, initiator_name="iqn.2005-03.org.pyiscsid:daemon", target_name="iqn.t:x", isid=1
    )
    assert default.initiator_name == "iqn.2005-03.org.pyiscsid:daemon"
    with pytest.raises(InvalidSetting, match=r"iface\.initiatorname"):
        validate("iface.initiatorname", "not an iqn")
