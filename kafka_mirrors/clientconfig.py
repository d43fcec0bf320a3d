"""Client settings: from the properties files operators already hand to Kafka's own CLI
tools (`--command-config`) to the librdkafka settings confluent-kafka needs.

Reading is forgiving (Java property syntax through jproperties, Kafka's JAAS login
modules, Java-only keys that change nothing for librdkafka are dropped with a note);
accepting is strict: a setting librdkafka cannot honour (a JKS store, a Java callback
class) is refused with a message saying what to use instead, and every translated
config is handed to librdkafka once so an unknown key or a bad file path fails here,
not later in a worker. No message ever carries a secret value.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from jproperties import Properties

from kafka_mirrors.errors import ConfigError

REDACTED = "******"

# ${VAR} (ours) and ${env:VAR} (Kafka's EnvVarConfigProvider syntax) are both read from
# the environment when a client config is built, so the registry can keep placeholders.
PLACEHOLDER = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")

_SECRET_WORDS = ("password", "secret", "jaas", "token", "credential")
_SECRET_KEYS = {"ssl.key.pem", "ssl.keystore.key", "sasl.oauthbearer.config"}

# Java client keys with no librdkafka counterpart whose absence changes nothing we rely
# on: librdkafka negotiates the TLS version itself and has its own timeouts.
_JAVA_ONLY_IGNORED = {
    "ssl.protocol": "librdkafka negotiates the highest TLS version both sides support",
    "ssl.enabled.protocols": "librdkafka negotiates the highest TLS version both sides support",
    "ssl.keymanager.algorithm": "not used by OpenSSL",
    "ssl.trustmanager.algorithm": "not used by OpenSSL",
    "ssl.secure.random.implementation": "not used by OpenSSL",
    "default.api.timeout.ms": "kafka-mirrors uses the link option request.timeout.s",
    "ssl.truststore.type": None,  # consumed by the translation below
    "ssl.keystore.type": None,
    "ssl.truststore.location": None,
    "ssl.truststore.password": None,
    "ssl.truststore.certificates": None,
    "ssl.keystore.location": None,
    "ssl.keystore.password": None,
    "ssl.keystore.key": None,
    "ssl.keystore.certificate.chain": None,
    "sasl.jaas.config": None,
}
_JAVA_CLASSES = {
    "sasl.login.callback.handler.class": "librdkafka's sasl.oauthbearer.* settings (e.g. sasl.oauthbearer.method=oidc)",
    "sasl.client.callback.handler.class": "librdkafka's sasl.* settings",
    "sasl.login.class": "librdkafka's sasl.* settings",
    "ssl.engine.factory.class": "librdkafka's ssl.* settings (PEM or PKCS#12 files)",
    "security.providers": "librdkafka's ssl.* settings",
    "config.providers": "${ENV_VAR} placeholders in the link's settings",
}


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_KEYS or any(w in k for w in _SECRET_WORDS)


def redact(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings safe to print: secret values hidden unless they are only placeholders."""
    out = {}
    for k, v in settings.items():
        if is_secret_key(k) and not PLACEHOLDER.fullmatch(str(v).strip()):
            out[k] = REDACTED
        else:
            out[k] = v
    return out


def has_inline_secret(settings: Mapping[str, str]) -> bool:
    return any(is_secret_key(k) and not PLACEHOLDER.fullmatch(str(v).strip()) for k, v in settings.items())


def load_properties(path: str | os.PathLike) -> dict[str, str]:
    """A Kafka-style (Java) properties file as a dict; ConfigError if missing or unreadable."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"client properties file '{p}' not found",
                          "pass the path of an existing file (e.g. the --command-config file of Kafka's CLI)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read client properties file '{p}': {exc.strerror}") from None
    props = Properties()
    try:
        props.load(raw, "utf-8")
    except Exception as exc:  # jproperties raises its own ParseError and UnicodeDecodeError
        raise ConfigError(f"client properties file '{p}' cannot be parsed: {type(exc).__name__}") from None
    return {str(k): str(v.data) for k, v in props.items()}


def resolve_placeholders(settings: Mapping[str, str], where: str, missing: str = "error") -> dict[str, str]:
    """Replace ${VAR} / ${env:VAR} with the environment's values. An unset variable is a
    ConfigError naming it, or (missing="keep") stays as written."""
    out = {}
    for key, value in settings.items():
        def sub(m: re.Match) -> str:
            var = m.group(1)
            if var not in os.environ:
                if missing == "keep":
                    return m.group(0)
                raise ConfigError(f"environment variable '{var}' is not set (used by {key} of {where})",
                                  f"export {var} before running kafka-mirrors")
            return os.environ[var]
        out[key] = PLACEHOLDER.sub(sub, str(value))
    return out


def unset_variables(settings: Mapping[str, str]) -> list[str]:
    return sorted({m.group(1) for v in settings.values() for m in PLACEHOLDER.finditer(str(v))
                   if m.group(1) not in os.environ})


# ---- JAAS: `Module flag key="value" key2=value2;` -------------------------------------

_JAAS_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^\s=;"]+)|(=)|(;))')


def parse_jaas(text: str) -> tuple[str, dict[str, str]]:
    """The login module class and its options from one sasl.jaas.config value."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _JAAS_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ConfigError("sasl.jaas.config cannot be parsed (expected: "
                              "LoginModule required username=\"...\" password=\"...\";)")
        pos = m.end()
        if m.group(1) is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", m.group(1))))
        elif m.group(2) is not None:
            tokens.append(("word", m.group(2)))
        elif m.group(3):
            tokens.append(("=", "="))
        else:
            tokens.append((";", ";"))
    if len(tokens) < 2 or tokens[0][0] != "word" or tokens[1][0] != "word":
        raise ConfigError("sasl.jaas.config cannot be parsed (expected: "
                          "LoginModule required username=\"...\" password=\"...\";)")
    module, options, i = tokens[0][1], {}, 2
    while i < len(tokens) and tokens[i][0] != ";":
        if (i + 2 < len(tokens) and tokens[i][0] == "word" and tokens[i + 1][0] == "="
                and tokens[i + 2][0] in ("word", "str")):
            options[tokens[i][1]] = tokens[i + 2][1]
            i += 3
        else:
            raise ConfigError(f"sasl.jaas.config of {module.rsplit('.', 1)[-1]} cannot be parsed: "
                              "options must be key=\"value\" pairs ending with ';'")
    if i + 1 < len(tokens):
        raise ConfigError("sasl.jaas.config holds more than one login module; kafka-mirrors needs exactly one")
    return module, options


def _translate_jaas(conf: dict[str, str], jaas: str, notes: list[str]) -> None:
    module, opts = parse_jaas(jaas)
    short = module.rsplit(".", 1)[-1]
    mechanism = conf.get("sasl.mechanism") or conf.get("sasl.mechanisms")
    if short == "PlainLoginModule":
        if not mechanism:
            conf["sasl.mechanism"] = "PLAIN"
            notes.append("sasl.mechanism not set: PLAIN assumed from PlainLoginModule")
        elif mechanism.upper() != "PLAIN":
            raise ConfigError(f"sasl.jaas.config uses PlainLoginModule but sasl.mechanism is {mechanism}",
                              "set sasl.mechanism=PLAIN")
    elif short == "ScramLoginModule":
        if not mechanism or mechanism.upper() not in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError("sasl.jaas.config uses ScramLoginModule but sasl.mechanism is "
                              f"{mechanism or 'not set'}", "set sasl.mechanism=SCRAM-SHA-256 or SCRAM-SHA-512")
    elif short == "OAuthBearerLoginModule":
        if "clientId" not in opts:
            raise ConfigError("sasl.jaas.config uses OAuthBearerLoginModule without clientId",
                              "use librdkafka's sasl.oauthbearer.* settings instead")
        conf["sasl.oauthbearer.method"] = "oidc"
        conf["sasl.oauthbearer.client.id"] = opts["clientId"]
        if "clientSecret" in opts:
            conf["sasl.oauthbearer.client.secret"] = opts["clientSecret"]
        if "scope" in opts:
            conf["sasl.oauthbearer.scope"] = opts["scope"]
        return
    elif short == "Krb5LoginModule":
        if "keyTab" in opts:
            conf["sasl.kerberos.keytab"] = opts["keyTab"]
        if "principal" in opts:
            conf["sasl.kerberos.principal"] = opts["principal"]
        return
    else:
        raise ConfigError(f"sasl.jaas.config login module {module} is not supported",
                          "use PlainLoginModule, ScramLoginModule, or librdkafka's sasl.* settings")
    if "username" not in opts or "password" not in opts:
        raise ConfigError(f"sasl.jaas.config of {short} needs username and password")
    conf["sasl.username"] = opts["username"]
    conf["sasl.password"] = opts["password"]


def _store_type(props: Mapping[str, str], key: str, location: str | None, default: str) -> str:
    t = props.get(key)
    if t:
        return t.strip().upper()
    # no type given: the file's suffix says more than any default does
    suffix = (location or "").lower()
    if suffix.endswith((".jks", ".keystore", ".truststore")):
        return "JKS"
    if suffix.endswith((".p12", ".pfx", ".pkcs12")):
        return "PKCS12"
    if suffix.endswith((".pem", ".crt", ".cer")):
        return "PEM"
    return default


def _translate_ssl(props: Mapping[str, str], conf: dict[str, str]) -> None:
    ts_loc = props.get("ssl.truststore.location")
    ts_pem = props.get("ssl.truststore.certificates")
    if ts_loc or ts_pem:
        # Kafka's default truststore type is JKS
        t = _store_type(props, "ssl.truststore.type", ts_loc, "PEM" if ts_pem else "JKS")
        if t == "PEM":
            if ts_pem:
                conf["ssl.ca.pem"] = ts_pem
            else:
                conf["ssl.ca.location"] = ts_loc
        elif t == "JKS":
            raise ConfigError(
                f"ssl.truststore.location '{ts_loc}' is a JKS truststore, which librdkafka cannot read",
                "export its CA certificates to PEM (keytool -exportcert -rfc -alias ALIAS -keystore FILE "
                "> ca.pem) and set ssl.truststore.type=PEM and ssl.truststore.location=ca.pem, "
                "or set librdkafka's ssl.ca.location")
        elif t == "PKCS12":
            raise ConfigError(
                f"ssl.truststore.location '{ts_loc}' is a PKCS#12 truststore, which librdkafka cannot read "
                "as a CA store",
                "convert it (openssl pkcs12 -in FILE -nokeys -out ca.pem) and set ssl.truststore.type=PEM "
                "and ssl.truststore.location=ca.pem, or set librdkafka's ssl.ca.location")
        else:
            raise ConfigError(f"ssl.truststore.type {t} is not supported", "use PEM")

    ks_loc = props.get("ssl.keystore.location")
    ks_key = props.get("ssl.keystore.key")
    ks_chain = props.get("ssl.keystore.certificate.chain")
    key_password = props.get("ssl.key.password")
    if ks_key or ks_chain:
        if not (ks_key and ks_chain):
            raise ConfigError("ssl.keystore.key and ssl.keystore.certificate.chain must be given together")
        conf["ssl.key.pem"] = ks_key
        conf["ssl.certificate.pem"] = ks_chain
        if key_password:
            conf["ssl.key.password"] = key_password
    elif ks_loc:
        # librdkafka's own ssl.keystore.location is PKCS#12, so that is the default here
        t = _store_type(props, "ssl.keystore.type", ks_loc, "PKCS12")
        if t == "PKCS12":
            conf["ssl.keystore.location"] = ks_loc
            store_pw = props.get("ssl.keystore.password")
            if store_pw:
                conf["ssl.keystore.password"] = store_pw
            if key_password and key_password != store_pw:
                raise ConfigError("ssl.key.password differs from ssl.keystore.password; librdkafka reads a "
                                  "PKCS#12 keystore with one password",
                                  "re-export the keystore with one password")
        elif t == "PEM":
            # a Java PEM keystore file holds the private key and the certificate chain;
            # OpenSSL picks each block out of the same file
            conf["ssl.key.location"] = ks_loc
            conf["ssl.certificate.location"] = ks_loc
            if key_password:
                conf["ssl.key.password"] = key_password
        elif t == "JKS":
            raise ConfigError(
                f"ssl.keystore.location '{ks_loc}' is a JKS keystore, which librdkafka cannot read",
                "convert it (keytool -importkeystore -srckeystore FILE -destkeystore client.p12 "
                "-deststoretype PKCS12) and set ssl.keystore.type=PKCS12")
        else:
            raise ConfigError(f"ssl.keystore.type {t} is not supported", "use PKCS12 or PEM")
    elif key_password:
        conf["ssl.key.password"] = key_password


def translate(props: Mapping[str, str], notes: list[str] | None = None) -> dict[str, str]:
    """Kafka (Java) client properties -> librdkafka settings. librdkafka's own keys pass
    through unchanged. `notes` collects what was dropped or assumed, for the operator."""
    notes = notes if notes is not None else []
    conf: dict[str, str] = {}
    for key, value in props.items():
        if key in _JAVA_CLASSES:
            raise ConfigError(f"{key} names a Java class, which kafka-mirrors cannot load",
                              f"use {_JAVA_CLASSES[key]}")
        if key in _JAVA_ONLY_IGNORED:
            reason = _JAVA_ONLY_IGNORED[key]
            if reason:
                notes.append(f"{key} ignored: {reason}")
            continue
        if key == "ssl.endpoint.identification.algorithm":
            conf[key] = value.strip() or "none"  # Java spells "off" as the empty string
            continue
        if key == "ssl.key.password":
            continue  # handled with the keystore
        conf[key] = value
    _translate_ssl(props, conf)
    if "sasl.jaas.config" in props:
        _translate_jaas(conf, props["sasl.jaas.config"], notes)
    if "sasl.mechanisms" in conf and "sasl.mechanism" in conf:
        conf.pop("sasl.mechanisms")
    return conf


def check_librdkafka(conf: Mapping[str, str], where: str) -> None:
    """Hand the settings to librdkafka once (without bootstrap servers, so nothing
    connects): an unknown key, a bad value or an unreadable certificate fails here."""
    from confluent_kafka import KafkaException, Producer

    probe = {k: v for k, v in conf.items() if k != "bootstrap.servers"}
    probe["log_level"] = 0
    try:
        Producer(probe)
    except (KafkaException, ValueError, TypeError) as exc:
        text = str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc)
        for k, v in conf.items():
            if is_secret_key(k) and v:
                text = text.replace(str(v), REDACTED)
        raise ConfigError(f"client settings of {where} are not accepted by librdkafka: {text}") from None
