"""Install dependencies names the real cause of pip's failures (issue 31, item 10).

The two end-to-end tests run the real installer (``model_env.create_or_update``: a venv from
QGIS's Python, then that venv's ``python -m pip``) against a package index that answers 403
to everything (a local HTTP server) and one that cannot be reached (a closed local port),
with pip's own configuration switched off so that nothing comes from elsewhere and nothing
is downloaded. The other causes are checked on pip's output as pip writes it."""
import http.server
import os
import socket
import threading

import pytest

from mamol.algorithms import model_env
from mamol.core.errors import MamolInputError


# ---- pip's output, as captured --------------------------------------------------------

CERTIFICATE_RETRY = (
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) "
    "after connection broken by 'SSLError(SSLCertVerificationError(1, '[SSL: "
    "CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in "
    "certificate chain (_ssl.c:1006)'))': /whl/cpu/torch/")
CERTIFICATE_FETCH = (
    "Could not fetch URL https://download.pytorch.org/whl/cpu/torch/: There was a problem "
    "confirming the ssl certificate: HTTPSConnectionPool(host='download.pytorch.org', "
    "port=443): Max retries exceeded with url: /whl/cpu/torch/ (Caused by SSLError("
    "SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
    "failed: self-signed certificate in certificate chain (_ssl.c:1006)'))) - skipping")
NOT_FOUND = ["ERROR: Could not find a version that satisfies the requirement "
             "torch<2.14,>=2.11 (from versions: none)",
             "ERROR: No matching distribution found for torch<2.14,>=2.11"]
CONFLICT = [
    "ERROR: Cannot install torchvision==0.28.0 because these package versions have "
    "conflicting dependencies.",
    "The conflict is caused by:",
    "    torchvision 0.28.0 depends on torch==2.13.0",
    "    The user requested (constraint) torch<2.14,>=2.11",
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"]
PROXY = ("WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, "
         "status=None)) after connection broken by 'ProxyError('Cannot connect to proxy.', "
         "NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at "
         "0x7f>: Failed to establish a new connection: [Errno 111] Connection refused'))': "
         "/simple/torch/")
DISK_FULL = ["Installing collected packages: nvidia-cublas, torch",
             "ERROR: Could not install packages due to an OSError: [Errno 28] No space left "
             "on device"]
LOG_404 = ("2026-12-04T23:59:01,123 Could not fetch URL https://mirror.example/simple/"
           "torch/: 404 Client Error: Not Found for url: https://mirror.example/simple/"
           "torch/ - skipping")


def cause_of(lines, log_text=""):
    cause, line = model_env.classify_pip(lines, log_text)
    return (cause.name if cause else None), line


def test_a_certificate_failure_is_named_even_where_pip_reports_a_conflict():
    """The issue's case: the TLS failure came out as 'conflicting dependencies'."""
    for lines in ([CERTIFICATE_RETRY, *NOT_FOUND], [CERTIFICATE_RETRY, *CONFLICT]):
        name, line = cause_of(lines)
        assert name == "certificate"
        assert line.startswith("Retrying (Retry(total=4") and "CERTIFICATE_VERIFY_FAILED" in line
    name, line = cause_of(NOT_FOUND, log_text="2026-12-04T23:59:01,123 " + CERTIFICATE_FETCH)
    assert (name, line) == ("certificate", CERTIFICATE_FETCH[:-len(" - skipping")])
    message = model_env.pip_failure([CERTIFICATE_RETRY, *CONFLICT])
    assert message.startswith("the package index's TLS certificate could not be verified. "
                              "pip said: “Retrying")
    assert "PIP_CERT" in message and "conflict" not in message.lower()


@pytest.mark.parametrize("lines, log_text, cause, quoted", [
    ([PROXY, *NOT_FOUND], "", "proxy", "Cannot connect to proxy"),
    (DISK_FULL, "", "disk-full", "Could not install packages due to an OSError: [Errno 28]"),
    (NOT_FOUND, LOG_404, "not-found", "404 Client Error: Not Found"),
    (CONFLICT, LOG_404, "conflict", "Cannot install torchvision==0.28.0"),   # 404: a side show
    (NOT_FOUND, "", "no-match", "No matching distribution found for torch<2.14,>=2.11"),
    (["ERROR: HTTP error 403 while getting https://download.pytorch.org/whl/cu128/torch.whl",
      "ERROR: Could not install requirement torch from https://download.pytorch.org/whl/"
      "cu128/torch.whl because of HTTP error 403 Client Error: Forbidden for url"], "",
     "http", "HTTP error 403 while getting"),
    (["Traceback (most recent call last):", "OSError: something else"], "", None,
     "OSError: something else"),
])
def test_causes_from_pips_output(lines, log_text, cause, quoted):
    name, line = cause_of(lines, log_text)
    assert name == cause
    assert quoted in line


def test_the_message_says_the_cause_pips_line_and_what_to_do():
    message = model_env.pip_failure(NOT_FOUND, LOG_404, "/p/python-env-pip.log")
    assert message.startswith("the package index answered HTTP 404 (not found). pip said: "
                              "“Could not fetch URL https://mirror.example/simple/torch/")
    assert "check 'Torch package index'" in message
    assert message.endswith(" pip's full log: /p/python-env-pip.log.")
    assert model_env.pip_failure(["ERROR: boom"]) == "boom."


# ---- the real pip against a refusing and an unreachable index ---------------------------

class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_index():
    """http://127.0.0.1:<port>/, answering 403 Forbidden to every request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port():
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pip_without_configuration(monkeypatch):
    """pip's configuration files and PIP_* variables off (no local wheels, mirrors or
    constraints), one retry, short timeouts."""
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "1")
    monkeypatch.setenv("PIP_TIMEOUT", "5")


def _install(folder, index):
    lines, warnings = [], []
    with pytest.raises(MamolInputError) as error:
        model_env.create_or_update(folder, model_env.base_python(), "cpu", index,
                                   log=lines.append, warn=warnings.append)
    return str(error.value), lines


def _nothing_left(folder):
    assert not folder.exists()
    assert sorted(path.name for path in folder.parent.iterdir()) == [folder.name + "-pip.log"]


@pytest.mark.subprocess
def test_an_index_that_answers_403(tmp_path, refusing_index, pip_without_configuration):
    message, lines = _install(tmp_path / "python-env", refusing_index)
    assert message.startswith("Installing PyTorch failed: the package index answered HTTP 403. "
                              f"pip said: “Could not fetch URL {refusing_index}torch/: 403 "
                              "Client Error: Forbidden")
    assert "the index refuses access" in message
    log_path = model_env.pip_log_path(tmp_path / "python-env")
    assert message.endswith(f"pip's full log: {log_path}.")
    # pip itself printed only that no version was found: the 403 is in its log file
    assert not any("403 Client Error" in line for line in lines)
    assert "403 Client Error" in log_path.read_text()
    _nothing_left(tmp_path / "python-env")


@pytest.mark.subprocess
def test_an_index_that_cannot_be_reached(tmp_path, closed_port, pip_without_configuration):
    index = f"http://127.0.0.1:{closed_port}/"
    message, _lines = _install(tmp_path / "python-env", index)
    assert message.startswith("Installing PyTorch failed: the package index could not be "
                              "reached. pip said: “")
    assert "Connection refused" in message and "internet connection" in message
    _nothing_left(tmp_path / "python-env")
