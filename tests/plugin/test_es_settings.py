"""A secured Elasticsearch cluster: the settings reach the official client (API key or basic
auth, CA file, verification), and impossible combinations are one clear error."""

from __future__ import annotations

import pytest

from indexers.errors import ConfigError, IndexStoreError
from indexers.es_schema import EsSettings, connect
from plugin.config import load_settings
from plugin.hook import es_settings


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "http_ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # read by the client on first request
    return path


def secured(tmp_path, **index):
    return load_settings(workspace=tmp_path, index={"template_backend": "elasticsearch",
                                                    "es_url": "https://es.internal:9200",
                                                    **index})


def test_basic_auth_and_ca_reach_the_client(tmp_path, ca_file):
    s = secured(tmp_path, es_username="elastic", es_password="changeme",
                es_ca_certs=str(ca_file))
    es = es_settings(s)
    assert (es.basic_auth, es.api_key, es.ca_certs, es.verify_certs) == (
        ("elastic", "changeme"), None, str(ca_file), True)
    client = connect(es)
    try:
        node = client.transport.node_pool.all()[0]
        assert node.config.ca_certs == str(ca_file) and node.config.verify_certs is True
        assert client._headers["authorization"].startswith("Basic ")
    finally:
        client.close()


def test_api_key_wins_and_verification_can_be_turned_off(tmp_path, caplog):
    s = secured(tmp_path, es_api_key="a2V5OnNlY3JldA==", es_username="elastic",
                es_password="changeme", es_verify_certs=False)
    es = es_settings(s)
    assert "es_verify_certs is false" in caplog.text  # said once, where it is set
    client = connect(es)
    try:
        assert client._headers["authorization"].startswith("ApiKey ")
        assert client.transport.node_pool.all()[0].config.verify_certs is False
    finally:
        client.close()


@pytest.mark.parametrize("index,error,message", [
    ({"es_username": "elastic"}, IndexStoreError, "needs both index.es_username and "
                                                  "index.es_password"),
    ({"es_url": "http://es.internal:9200", "es_ca_certs": "CA"}, ConfigError,
     "a CA file is set but 'http://es.internal:9200' is not https"),
    ({"es_ca_certs": "/nonexistent/ca.crt"}, ConfigError, "CA file /nonexistent/ca.crt does "
                                                          "not exist"),
])
def test_impossible_combinations_are_one_error(tmp_path, ca_file, index, error, message):
    if index.get("es_ca_certs") == "CA":
        index = {**index, "es_ca_certs": str(ca_file)}
    with pytest.raises(error, match=message.replace("(", r"\(")):
        es_settings(secured(tmp_path, **index))


def test_the_environment_configures_a_secured_cluster(tmp_path, ca_file, monkeypatch):
    for name, value in {"UDRL_INDEX__TEMPLATE_BACKEND": "elasticsearch",
                        "UDRL_INDEX__ES_URL": "https://es.internal:9200",
                        "UDRL_INDEX__ES_USERNAME": "elastic",
                        "UDRL_INDEX__ES_PASSWORD": "changeme",
                        "UDRL_INDEX__ES_CA_CERTS": str(ca_file)}.items():
        monkeypatch.setenv(name, value)
    es = es_settings(load_settings(workspace=tmp_path))
    assert es.basic_auth == ("elastic", "changeme") and es.ca_certs == str(ca_file)
    assert isinstance(es, EsSettings)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A local HTTPS stand-in for a secured Elasticsearch: its own CA, basic auth
    elastic/changeme, and an empty cluster (no alias yet). Yields (url, CA file)."""
    import base64
    import json
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test CA")
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=udrl test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "node.crt", "-days", "2", "-extfile", "san.ext")
    want = "Basic " + base64.b64encode(b"elastic:changeme").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.headers.get("Authorization") == want
            status, body = (404, {"error": "alias [udrl-templates] missing", "status": 404}) \
                if ok else (401, {"error": "unable to authenticate user", "status": 401})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "node.crt", d / "node.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", d / "ca.crt"
    server.shutdown()


@pytest.mark.parametrize("index,expect", [
    ({"es_ca_certs": "CA", "es_username": "elastic", "es_password": "changeme"},
     "alias 'udrl-templates' does not exist"),  # TLS verified, authenticated, cluster empty
    ({"es_username": "elastic", "es_password": "changeme"}, "CERTIFICATE_VERIFY_FAILED"),
    ({"es_ca_certs": "CA", "es_username": "elastic", "es_password": "wrong"},
     "unable to authenticate user"),
    ({"es_verify_certs": False, "es_username": "elastic", "es_password": "changeme"},
     "alias 'udrl-templates' does not exist"),
])
def test_a_secured_cluster_through_the_pipeline_loader(tmp_path, tls_cluster, index, expect,
                                                       intent_detector):
    from plugin.hook import load_pipeline

    from .fakes import FakeRewriter

    url, ca = tls_cluster
    if index.get("es_ca_certs") == "CA":
        index = {**index, "es_ca_certs": str(ca)}
    s = load_settings(workspace=tmp_path, index={"template_backend": "elasticsearch",
                                                 "es_url": url, **index},
                      service={"require_indexes": ["template"]})
    s = s.model_copy(update={"index": s.index.model_copy(update={"dense": False})})
    pipe = load_pipeline(s, rewriter=FakeRewriter(), tasks=["template"])
    try:
        assert pipe.template_index is None
        assert expect in pipe.components()["template_index"]["error"]
    finally:
        pipe.close()
