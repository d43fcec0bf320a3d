from kafka_mirrors.mirrors import mirror_configs


def test_source_settings_then_forced_then_operator_overrides():
    source = {"retention.ms": "1000", "message.timestamp.type": "LogAppendTime", "cleanup.policy": "compact"}
    assert mirror_configs(source, {"retention.ms": "5000"}) == {
        "retention.ms": "5000",                      # the operator's --config wins
        "message.timestamp.type": "CreateTime",      # a mirror keeps source timestamps
        "cleanup.policy": "compact",
    }


def test_no_overrides():
    assert mirror_configs({}, None) == {"message.timestamp.type": "CreateTime"}
