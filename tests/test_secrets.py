"""Secrets never leave the process: the one redaction (errors.scrub), its registry, the log filter, credentials
by reference (tasks.credentials) and the places that write text (summary rows, reports, the closing table,
store attributes, the CLI's error line). No server needed; the batch through Prefect, Dask and S3 is in
tests/flows/test_secrets_batch.py."""

import io
import json
import logging
import sys
import threading

import pytest

import errors
from errors import ConfigError, ScrubFilter, register_secrets, register_url_secrets, scrub, scrub_record
from storage.urls import merge_options, public_options, redact, split_secrets

# distinctive values, registered by the tests below (the registry is process-wide, like in a run)
KEY, SECRET, TOKEN = "AKIAUNITTESTKEY00001", "UnitSecretQ7w3Z9xLm2", "UnitSessionTok8Rr5"


def test_scrub_removes_url_credentials_and_signed_queries():
    cases = {
        "s3://AKIA1:pw@bkt/in/c0: missing": "s3://bkt/in/c0: missing",
        "https://tok@host/repo.git": "https://host/repo.git",
        "s3://bkt/in/c0?X-Amz-Signature=abc&X-Amz-Credential=K%2F2026 failed": "s3://bkt/in/c0 failed",
        "key in/c0?X-Amz-Signature=abcd&sig=efgh&aws_session_token=ijkl": "key in/c0?X-Amz-Signature=***&sig=***"
                                                                          "&aws_session_token=***",
        "http://127.0.0.1:8787/status": "http://127.0.0.1:8787/status",  # a port is no password
        "http://host:8080/a@b.png": "http://host:8080/a@b.png",
        "s3://bucket/images/logo@2x.png": "s3://bucket/images/logo@2x.png",
        "max_tokens=5 credentials=env:VAR design=1": "max_tokens=5 credentials=env:VAR design=1",
    }
    for text, clean in cases.items():
        assert scrub(text) == clean, text
    # a password holding a raw "/" (as AWS secrets do): the whole user info goes, and s3fs's complaint about
    # the "bucket" it parsed out of it is masked once the URL was registered
    url = "s3://AKIARAWUSER0001:RawPassA1b2C3/D4e5F6g7H8@bkt/in/c0"
    assert scrub(url) == "s3://bkt/in/c0"
    register_url_secrets(url)
    quoted = 'Invalid bucket name "AKIARAWUSER0001:RawPassA1b2C3": ... D4e5F6g7H8@bkt/in/c0'
    assert "AKIARAWUSER0001" not in scrub(quoted) and "RawPass" not in scrub(quoted) and "D4e5F6g7H8" not in \
        scrub(quoted)
    assert redact(url) == "s3://bkt/in/c0" and redact("s3://bkt/x?sig=1#frag") == "s3://bkt/x"


def test_registered_storage_option_secrets_are_masked_everywhere():
    options = {"key": KEY, "secret": SECRET, "anon": False, "token": None, "endpoint_url": "http://127.0.0.1:9",
               "client_kwargs": {"region_name": "us-east-1", "aws_session_token": TOKEN}, "password": "abc"}
    assert register_secrets(options) is options
    text = f"{KEY} {SECRET} {TOKEN} {SECRET.replace('Q', '%51')} abc http://127.0.0.1:9 us-east-1"
    assert scrub(text) == f"*** *** *** {SECRET.replace('Q', '%51')} abc http://127.0.0.1:9 us-east-1"
    assert "/" not in SECRET  # the URL-encoded form is registered too
    slashed = "Unit/Secret+With=Slash9"
    register_secrets({"secret": slashed})
    assert scrub("a Unit%2FSecret%2BWith%3DSlash9 b") == "a *** b"
    assert errors.describe(ValueError(f"denied for {KEY}")) == "ValueError: denied for ***"


def test_split_merge_and_public_options():
    options = {"key": KEY, "secret": SECRET, "anon": False, "token": "",
               "client_kwargs": {"endpoint_url": "http://e", "aws_session_token": TOKEN},
               "config_kwargs": {"retries": {"total_max_attempts": 2}}}
    public, secret = split_secrets(options)
    assert public == {"anon": False, "client_kwargs": {"endpoint_url": "http://e"},
                      "config_kwargs": {"retries": {"total_max_attempts": 2}}}
    assert secret == {"key": KEY, "secret": SECRET, "client_kwargs": {"aws_session_token": TOKEN}}
    assert merge_options(public, secret) == {k: v for k, v in options.items() if k != "token"}
    assert public_options(options) == public
    assert split_secrets(None) == ({}, {})


@pytest.fixture()
def log_state():
    """install_log_scrubbing changes process-wide hooks: put them back as they were."""
    saved = (logging.getLogRecordFactory(), sys.excepthook, threading.excepthook)
    loggers = [logging.getLogger(name) for name in errors.SCRUBBED_LOGGERS]
    filters = {id(t): list(t.filters) for lg in loggers for t in (lg, *lg.handlers)}
    yield
    logging.setLogRecordFactory(saved[0])
    sys.excepthook, threading.excepthook = saved[1], saved[2]
    for lg in loggers:
        for t in (lg, *lg.handlers):
            if id(t) in filters:
                t.filters[:] = filters[id(t)]


def _capture(name: str, with_filter: bool):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    if with_filter:
        handler.addFilter(ScrubFilter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def _log_a_failure(logger):
    try:
        raise OSError(f"cannot open s3://{KEY}:{SECRET}@bkt/x with {SECRET}")
    except OSError:
        logger.exception("collection %s failed: %s", "c1", {"secret": SECRET, "url": "s3://bkt/x?sig=zz9"})


def test_log_filter_scrubs_message_arguments_and_traceback(log_state):
    logger, stream = _capture("zipmap.test.filter", with_filter=True)
    _log_a_failure(logger)
    out = stream.getvalue()
    assert "collection c1 failed: {'secret': '***', 'url': 's3://bkt/x'}" in out  # the arguments, merged, scrubbed
    assert "Traceback" in out and "OSError: cannot open s3://bkt/x with ***" in out  # the traceback kept, scrubbed
    assert SECRET not in out and KEY not in out and "zz9" not in out
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", ("t0k3nVALUE",), None)
    assert scrub_record(record).getMessage() == "token=***" and record.args == ()


def test_installed_scrubbing_covers_every_logger_and_uncaught_exceptions(log_state, capsys):
    logging.setLogRecordFactory(logging.LogRecord)  # as a fresh process starts
    sys.excepthook = sys.__excepthook__
    assert not errors.log_scrubbing_installed()
    logger, stream = _capture("zipmap.test.factory", with_filter=False)  # a handler without any filter
    errors.install_log_scrubbing()
    errors.install_log_scrubbing()  # idempotent: one factory, one filter
    assert errors.log_scrubbing_installed()
    assert logging.getLogger().filters.count(errors._FILTER) == 1
    _log_a_failure(logger)
    out = stream.getvalue()
    assert "OSError: cannot open s3://bkt/x with ***" in out and SECRET not in out and KEY not in out
    try:
        raise RuntimeError(f"uncaught {SECRET}")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert "RuntimeError: uncaught ***" in err and SECRET not in err


def test_credentials_by_reference(tmp_path, monkeypatch):
    from tasks.credentials import refuse_plain_secrets, resolve_credentials, with_credentials

    creds = {"key": "AKIAREFKEY0000000001", "secret": "RefSecretV4lue9Zp"}
    monkeypatch.setenv("ZIPMAP_TEST_CREDS", json.dumps(creds))
    (tmp_path / "creds.json").write_text(json.dumps(creds))
    assert resolve_credentials("env:ZIPMAP_TEST_CREDS") == creds == resolve_credentials(f"file:{tmp_path}/creds.json")
    assert scrub("RefSecretV4lue9Zp") == "***"  # registered where it was resolved
    merged = with_credentials({"client_kwargs": {"endpoint_url": "http://e"}}, "env:ZIPMAP_TEST_CREDS")
    assert merged == {**creds, "client_kwargs": {"endpoint_url": "http://e"}}
    assert with_credentials(None, None) is None and resolve_credentials("") == {}
    for ref, says in [("env:ZIPMAP_NOT_SET_X", "not set"), (f"file:{tmp_path}/none.json", "cannot read"),
                      ("plaintextSecret99", "expected a reference"), ("env:ZIPMAP_BAD_JSON", "not a JSON object")]:
        monkeypatch.setenv("ZIPMAP_BAD_JSON", '{"secret": "Half0fAJs0nSecret"')
        with pytest.raises(ConfigError) as info:
            resolve_credentials(ref)
        assert says in str(info.value) and "\n" not in str(info.value)
        assert "plaintextSecret99" not in str(info.value) and "Half0fAJs0nSecret" not in str(info.value)

    # a flow refuses secrets as parameters, in one line that names the way to pass them, and quotes none
    with pytest.raises(ConfigError) as info:
        refuse_plain_secrets("reconstruct-batch", {"secret": "Pl4inSecretValue", "client_kwargs": {
            "endpoint_url": "http://e", "aws_session_token": "Pl4inSessionTok"}})
    text = str(info.value)
    assert "secret, client_kwargs.aws_session_token" in text and "block:NAME" in text and "env:VAR" in text
    assert "Pl4in" not in text and "\n" not in text
    with pytest.raises(ConfigError) as info:
        refuse_plain_secrets("reconstruct-batch", None, manifest="s3://bkt/m.csv?X-Amz-Signature=S1gnatureVal")
    assert "manifest 's3://bkt/m.csv' carries credentials" in str(info.value) and "S1gn" not in str(info.value)
    refuse_plain_secrets("x", {"client_kwargs": {"endpoint_url": "http://e"}, "anon": True},
                         weights="https://host/ckpt.pt?download=true", out="s3://bkt/out")  # nothing secret


def test_batch_keeps_storage_option_secrets_out_of_the_flow_parameters():
    from flows.batch import secrets_by_reference
    from tasks.credentials import CREDENTIALS_ENV

    public = {"client_kwargs": {"endpoint_url": "http://e"}}
    assert secrets_by_reference(public, None, None) == (public, {}, None)
    assert secrets_by_reference(public, "block:s3", "tcp://h:8786") == (public, {}, "block:s3")
    options = {"key": "AKIASPLITKEY00000001", "secret": "SplitSecretK3y9", **public}
    flow_options, env, ref = secrets_by_reference(options, None, None)
    assert flow_options == public and ref == f"env:{CREDENTIALS_ENV}"
    assert json.loads(env[CREDENTIALS_ENV]) == {"key": "AKIASPLITKEY00000001", "secret": "SplitSecretK3y9"}
    for credentials, cluster, says in [(None, "tcp://h:8786", "--credentials block:NAME"),
                                       ("block:s3", None, "one way")]:
        with pytest.raises(ConfigError) as info:
            secrets_by_reference(options, credentials, cluster)
        assert says in str(info.value) and "SplitSecret" not in str(info.value) and "\n" not in str(info.value)


def test_written_text_is_scrubbed(tmp_path, capsys):
    """Summary rows, the validation report (Markdown, HTML), the closing table, store attributes and the CLI's
    error line: the raw URL and the registered secrets never reach them."""
    import cli
    from flows.batch import _artifact_row, closing_table
    from storage.zarr_store import ReconstructionStore
    from tasks.batch import summary_row
    from validation import render_html, render_report

    source = "s3://AKIAROWUSER000000001:RowPass7Hh3/Kk9Jj2Ll5@bkt/in/c1"
    reason = f'{source}: cannot be listed (Invalid bucket name "AKIAROWUSER000000001:RowPass7Hh3") {SECRET}'
    register_secrets({"secret": SECRET})
    row = summary_row("c1", source, "failed", reason, output=f"s3://bkt/out/c1.zarr?sig={SECRET}")
    texts = [json.dumps(row, default=str), json.dumps(_artifact_row(row), default=str), closing_table([row]),
             render_report([], f"Batch r: {source}", collections=[row]),
             render_html([], f"Batch r: {source}", collections=[row])]
    assert row["source"] == "s3://bkt/in/c1" and row["output"] == "s3://bkt/out/c1.zarr"
    assert "cannot be listed" in row["reason"] and "***" in row["reason"]
    store = ReconstructionStore(str(tmp_path / "c1.zarr"))
    store.begin({"source": source, "note": f"made with {SECRET}"})
    store.fail(f"RuntimeError: {reason}")
    texts.append((tmp_path / "c1.zarr" / "zarr.json").read_text())
    assert json.loads(texts[-1])["attributes"]["zipmap_status"] == "failed"
    assert cli._error(ConfigError(reason)) == 2
    texts.append(capsys.readouterr().err)
    for text in texts:
        for secret in ("AKIAROWUSER000000001", "RowPass7Hh3", "Kk9Jj2Ll5", SECRET):
            assert secret not in text, (secret, text)


def test_object_store_secrets_of_the_environment_are_masked(monkeypatch):
    from errors import install_log_scrubbing, scrub

    value = "EnvSecretZq81xPlm0vWw"
    assert value in scrub(f"botocore said {value}")  # not known yet
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", value)
    install_log_scrubbing()
    assert scrub(f"botocore said {value}") == "botocore said ***"
