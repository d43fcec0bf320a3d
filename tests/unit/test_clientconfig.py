"""Kafka-style client properties -> librdkafka settings, without a broker."""
import pytest

from kafka_mirrors import clientconfig
from kafka_mirrors.clientconfig import load_properties, parse_jaas, redact, resolve_placeholders, translate
from kafka_mirrors.errors import ConfigError

PLAIN = 'org.apache.kafka.common.security.plain.PlainLoginModule required username="alice" password="alice-secret";'
SCRAM = 'org.apache.kafka.common.security.scram.ScramLoginModule required username="bob" password="p\\"w";'


def test_kafka_cli_plain_file_translates(tmp_path):
    f = tmp_path / "admin.properties"
    # Java property syntax: ':' separators, comments, a value continued over two lines
    f.write_text("# from kafka-topics --command-config\nsecurity.protocol: SASL_PLAINTEXT\n"
                 "sasl.mechanism=PLAIN\nsasl.jaas.config=" + PLAIN[:40] + "\\\n    " + PLAIN[40:] + "\n")
    conf = translate(load_properties(f))
    assert conf == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                    "sasl.username": "alice", "sasl.password": "alice-secret"}


def test_scram_with_escaped_quote():
    conf = translate({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                      "sasl.jaas.config": SCRAM})
    assert conf["sasl.username"] == "bob"
    assert conf["sasl.password"] == 'p"w'
    assert "sasl.jaas.config" not in conf


def test_scram_needs_its_mechanism():
    with pytest.raises(ConfigError, match="SCRAM-SHA-256 or SCRAM-SHA-512"):
        translate({"sasl.jaas.config": SCRAM})


def test_plain_mechanism_is_assumed_with_a_note():
    notes = []
    conf = translate({"security.protocol": "SASL_PLAINTEXT", "sasl.jaas.config": PLAIN}, notes)
    assert conf["sasl.mechanism"] == "PLAIN"
    assert any("PLAIN assumed" in n for n in notes)


def test_mismatched_mechanism_is_refused():
    with pytest.raises(ConfigError, match="PlainLoginModule but sasl.mechanism is SCRAM-SHA-256"):
        translate({"sasl.mechanism": "SCRAM-SHA-256", "sasl.jaas.config": PLAIN})


def test_jaas_parse_errors_never_show_the_secret():
    with pytest.raises(ConfigError) as e:
        parse_jaas('org.Foo required password="hunter2" broken')
    assert "cannot be parsed" in e.value.message and "hunter2" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        translate({"sasl.mechanism": "PLAIN",
                   "sasl.jaas.config": 'com.example.Custom required password="hunter2";'})
    assert "hunter2" not in str(e.value)


def test_pem_truststore_and_keystore():
    conf = translate({"security.protocol": "SSL", "ssl.truststore.type": "PEM",
                      "ssl.truststore.location": "/etc/ca.pem", "ssl.keystore.type": "PEM",
                      "ssl.keystore.location": "/etc/client.pem", "ssl.key.password": "k",
                      "ssl.endpoint.identification.algorithm": ""})
    assert conf == {"security.protocol": "SSL", "ssl.ca.location": "/etc/ca.pem",
                    "ssl.key.location": "/etc/client.pem", "ssl.certificate.location": "/etc/client.pem",
                    "ssl.key.password": "k", "ssl.endpoint.identification.algorithm": "none"}


def test_inline_pem():
    conf = translate({"ssl.truststore.type": "PEM", "ssl.truststore.certificates": "-----BEGIN CERT",
                      "ssl.keystore.type": "PEM", "ssl.keystore.key": "-----BEGIN KEY",
                      "ssl.keystore.certificate.chain": "-----BEGIN CHAIN"})
    assert conf == {"ssl.ca.pem": "-----BEGIN CERT", "ssl.key.pem": "-----BEGIN KEY",
                    "ssl.certificate.pem": "-----BEGIN CHAIN"}


def test_pkcs12_keystore_is_native():
    conf = translate({"ssl.keystore.type": "PKCS12", "ssl.keystore.location": "/etc/c.p12",
                      "ssl.keystore.password": "pw", "ssl.key.password": "pw"})
    assert conf == {"ssl.keystore.location": "/etc/c.p12", "ssl.keystore.password": "pw"}


@pytest.mark.parametrize("props,says", [
    ({"ssl.truststore.location": "/etc/kafka/truststore.jks", "ssl.truststore.password": "x"}, "keytool -exportcert"),
    ({"ssl.truststore.type": "JKS", "ssl.truststore.location": "/t"}, "ssl.truststore.type=PEM"),
    ({"ssl.truststore.type": "PKCS12", "ssl.truststore.location": "/t.p12"}, "openssl pkcs12"),
    ({"ssl.keystore.type": "JKS", "ssl.keystore.location": "/k.jks"}, "-deststoretype PKCS12"),
    ({"sasl.login.callback.handler.class": "x.Y"}, "sasl.oauthbearer"),
    ({"config.providers": "file"}, "${ENV_VAR}"),
])
def test_unhonourable_settings_say_what_to_use(props, says):
    with pytest.raises(ConfigError) as e:
        translate(props)
    assert says in str(e.value)


def test_librdkafka_keys_pass_through_and_java_only_are_noted():
    notes = []
    conf = translate({"ssl.ca.location": "/ca.pem", "sasl.username": "u", "sasl.password": "p",
                      "ssl.protocol": "TLSv1.3", "client.id": "km"}, notes)
    assert conf == {"ssl.ca.location": "/ca.pem", "sasl.username": "u", "sasl.password": "p", "client.id": "km"}
    assert notes == ["ssl.protocol ignored: librdkafka negotiates the highest TLS version both sides support"]


def test_placeholders(monkeypatch):
    monkeypatch.setenv("PW", "s3cret")
    assert resolve_placeholders({"sasl.password": "${PW}", "x": "a${env:PW}b"}, "here") == \
        {"sasl.password": "s3cret", "x": "as3cretb"}
    monkeypatch.delenv("PW")
    with pytest.raises(ConfigError, match="environment variable 'PW' is not set"):
        resolve_placeholders({"sasl.password": "${PW}"}, "here")
    assert resolve_placeholders({"p": "${PW}"}, "here", missing="keep") == {"p": "${PW}"}


def test_redact_hides_secrets_but_not_placeholders():
    assert redact({"sasl.password": "x", "ssl.key.pem": "k", "sasl.jaas.config": PLAIN,
                   "sasl.username": "u", "ssl.keystore.password": "${KS_PW}"}) == \
        {"sasl.password": "******", "ssl.key.pem": "******", "sasl.jaas.config": "******",
         "sasl.username": "u", "ssl.keystore.password": "${KS_PW}"}


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.properties' not found"):
        load_properties(tmp_path / "nope.properties")


def test_librdkafka_refuses_unknown_key_without_leaking_values():
    with pytest.raises(ConfigError, match="no.such.key"):
        clientconfig.check_librdkafka({"no.such.key": "1"}, "the source cluster")
    with pytest.raises(ConfigError) as e:
        clientconfig.check_librdkafka({"security.protocol": "hunter2", "sasl.password": "hunter2"}, "x")
    assert "hunter2" not in str(e.value)
    clientconfig.check_librdkafka({"bootstrap.servers": "127.0.0.1:1", "sasl.username": "u"}, "x")
