"""TLS on every hop, mutual TLS and an internal token between services, bearer tokens on the public API."""

from __future__ import annotations

import grpc
import pytest

from specdec.serving.client import Client, build_request
from specdec.serving.security import TLSFiles
from specdec.tools.certs import generate
from specdec.tools.launcher import Stack
from specdec.v1 import target_pb2, target_pb2_grpc
from tests.integration.servers import free_base_port

pytestmark = pytest.mark.timeout(300)
API_TOKEN = "s3cret-api-token"
INTERNAL_TOKEN = "internal-hop-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secure_stack(certs, tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "api-tokens").write_text(f"# accepted API tokens\nother-token\n{API_TOKEN}\n")
    (secrets / "internal").write_text(INTERNAL_TOKEN + "\n")
    server_tls = ["--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
                  "--tls-ca-file", str(certs / "ca.crt")]
    internal = ["--tls-client-auth", "--internal-token-file", str(secrets / "internal")]
    stack = Stack(port=free_base_port(), tls=TLSFiles(cert=str(certs / "client.crt"), key=str(certs / "client.key"),
                                                      ca=str(certs / "ca.crt")),
                  extra={"draft": server_tls + internal, "target": server_tls + internal,
                         # the orchestrator serves plain TLS to clients and uses its own cert for mTLS to backends
                         "orchestrator": server_tls + ["--api-token-file", str(secrets / "api-tokens"),
                                                       "--internal-token-file", str(secrets / "internal")]})
    stack.start(timeout_s=120)
    yield stack
    stack.stop()


def client_for(stack, certs, ca: str = "ca.crt", token: str | None = API_TOKEN) -> Client:
    return Client(stack.address, timeout_s=60, tls=TLSFiles(ca=str(certs / ca)), token=token)


def test_right_token_over_tls_works_and_speculates_over_mtls(secure_stack, certs, tiny_pair):
    with client_for(secure_stack, certs) as client:
        result = client.generate(build_request("def main():", max_new_tokens=24, ignore_eos=True))
    expected = tiny_pair.decoder.generate(__import__("specdec.core.config", fromlist=["x"]).GenerationRequest(
        prompt_ids=tiny_pair.encode("def main():"), max_new_tokens=24, ignore_eos=True)).token_ids
    assert result.token_ids == expected
    assert result.summary.speculation.drafts > 0 and not result.summary.draft_failed  # target <-> draft over mTLS


def test_missing_token_is_unauthenticated(secure_stack, certs):
    with client_for(secure_stack, certs, token=None) as client, pytest.raises(grpc.RpcError) as err:
        client.generate(build_request("x", max_new_tokens=2))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.details()


def test_wrong_token_is_permission_denied(secure_stack, certs):
    with client_for(secure_stack, certs, token="guess") as client, pytest.raises(grpc.RpcError) as err:
        client.generate(build_request("x", max_new_tokens=2))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_wrong_ca_fails_the_handshake(secure_stack, certs):
    with client_for(secure_stack, certs, ca="other-ca.crt") as client, pytest.raises(grpc.RpcError) as err:
        client.generate(build_request("x", max_new_tokens=2))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(secure_stack):
    with Client(secure_stack.address, timeout_s=10, token=API_TOKEN) as client, pytest.raises(grpc.RpcError) as err:
        client.generate(build_request("x", max_new_tokens=2))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_internal_services_demand_the_internal_credential(secure_stack, certs):
    target = secure_stack.addresses()["target"]
    request = target_pb2.TargetGenerateRequest(session_id="s", prompt_ids=[1, 2], max_new_tokens=2)
    with_cert = TLSFiles(cert=str(certs / "client.crt"), key=str(certs / "client.key"), ca=str(certs / "ca.crt"))
    from specdec.serving.server import make_channel
    with make_channel(target, with_cert) as ch:  # a client certificate but no internal token
        with pytest.raises(grpc.RpcError) as err:
            list(target_pb2_grpc.TargetServiceStub(ch).Generate(request, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = list(target_pb2_grpc.TargetServiceStub(ch).Generate(
            request, timeout=10, metadata=(("authorization", f"Bearer {INTERNAL_TOKEN}"),)))
        assert sum(len(m.token_ids) for m in ok) == 2
    with make_channel(target, TLSFiles(ca=str(certs / "ca.crt"))) as ch:  # no client certificate: no handshake
        with pytest.raises(grpc.RpcError) as err:
            list(target_pb2_grpc.TargetServiceStub(ch).Generate(
                request, timeout=10, metadata=(("authorization", f"Bearer {INTERNAL_TOKEN}"),)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
