"""The fake Bedrock's SigV4 checker against AWS's published Signature Version 4 test suite.

The vectors are from the "Signature Version 4 test suite" (aws-sig-v4-test-suite, linked from
AWS's SigV4 documentation): credentials ``AKIDEXAMPLE`` /
``wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY``, region ``us-east-1``, service ``service``, time
``20150830T123600Z``, host ``example.amazonaws.com``. Each case is the request as the suite writes
it (path and query as sent, headers, body) and the signature the suite publishes.
"""

from __future__ import annotations

import datetime as dt

import pytest

from asgi_llmguard.testing._sigv4 import SignatureError, SignedRequest, canonical_request, verify

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
DATE = "20150830T123600Z"
HOST = ("host", "example.amazonaws.com")
STS_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPf"
    "IeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7W"
    "Z0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8F"
    "DrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
)
UNRESERVED = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MY1 = "my-header1"

# name, method, path, query, extra headers, body, signature
VECTORS: list[tuple[str, str, bytes, bytes, list[tuple[str, str]], bytes, str]] = [
    ("get-vanilla", "GET", b"/", b"", [], b"",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-query-order-key-case", "GET", b"/", b"Param2=value2&Param1=value1", [], b"",
     "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-query-unreserved", "GET", b"/", f"{UNRESERVED}={UNRESERVED}".encode(), [], b"",
     "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    ("get-vanilla-utf8-query", "GET", b"/", "ሴ=bar".encode(), [], b"",
     "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-utf8", "GET", "/ሴ".encode(), b"", [], b"",
     "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-unreserved", "GET", f"/{UNRESERVED}".encode(), b"", [], b"",
     "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    ("get-header-value-trim", "GET", b"/", b"",
     [(MY1, " value1"), ("my-header2", ' "a   b   c"')], b"",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("get-header-key-duplicate", "GET", b"/", b"",
     [(MY1, "value2"), (MY1, "value2"), (MY1, "value1")], b"",
     "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    ("normalize-path/get-relative-relative", "GET", b"/example1/example2/../..", b"", [], b"",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("normalize-path/get-slash-dot-slash", "GET", b"/./", b"", [], b"",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("post-vanilla", "POST", b"/", b"", [], b"",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-vanilla-query", "POST", b"/", b"Param1=value1", [], b"",
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-header-key-sort", "POST", b"/", b"", [(MY1, "value1")], b"",
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("post-header-value-case", "POST", b"/", b"", [(MY1, "VALUE1")], b"",
     "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    ("post-sts-token/post-sts-header-before", "POST", b"/", b"",
     [("x-amz-security-token", STS_TOKEN)], b"",
     "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"),
    ("post-x-www-form-urlencoded", "POST", b"/", b"",
     [("content-type", "application/x-www-form-urlencoded")], b"Param1=value1",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ("post-x-www-form-urlencoded-parameters", "POST", b"/", b"",
     [("content-type", "application/x-www-form-urlencoded; charset=utf8")], b"Param1=value1",
     "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"),
]  # fmt: skip


def _request(
    method: str,
    path: bytes,
    query: bytes,
    extra: list[tuple[str, str]],
    body: bytes,
    signature: str,
) -> SignedRequest:
    names = sorted({"host", "x-amz-date", *(name for name, _ in extra)})
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    headers = [HOST, ("x-amz-date", DATE), *extra, ("authorization", authorization)]
    return SignedRequest(method, path, query, headers, body)


def _check(request: SignedRequest, **kwargs: object) -> str:
    return verify(
        request,
        {ACCESS_KEY: SECRET}.get,
        service="service",
        region="us-east-1",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("method", "path", "query", "extra", "body", "signature"),
    [v[1:] for v in VECTORS],
    ids=[v[0] for v in VECTORS],
)
def test_aws_test_suite_vectors(
    method: str,
    path: bytes,
    query: bytes,
    extra: list[tuple[str, str]],
    body: bytes,
    signature: str,
) -> None:
    assert _check(_request(method, path, query, extra, body, signature)) == ACCESS_KEY
    # One hex digit off, and the same request is refused.
    wrong = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    with pytest.raises(SignatureError) as refused:
        _check(_request(method, path, query, extra, body, wrong))
    assert refused.value.code == "InvalidSignatureException"


def test_the_canonical_request_of_the_suite() -> None:
    """get-vanilla-query-order-key-case's canonical request, as the suite prints it."""
    request = _request("GET", b"/", b"Param2=value2&Param1=value1", [], b"", "0" * 64)
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert canonical_request(request, ["host", "x-amz-date"], empty) == (
        "GET\n/\nParam1=value1&Param2=value2\n"
        "host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        f"host;x-amz-date\n{empty}"
    )


def test_a_path_is_encoded_again_as_every_service_but_s3_does() -> None:
    request = _request("POST", b"/model/a%3Ab/converse", b"", [], b"", "0" * 64)
    canonical = canonical_request(request, ["host", "x-amz-date"], "x")
    assert canonical.splitlines()[1] == "/model/a%253Ab/converse"


def test_refusals_name_awss_error_codes() -> None:
    good = VECTORS[0]
    request = _request(*good[1:])
    at = dt.datetime(2015, 8, 30, 12, 36, tzinfo=dt.UTC)
    assert _check(request, now=at + dt.timedelta(minutes=4)) == ACCESS_KEY
    with pytest.raises(SignatureError, match="Signature expired") as expired:
        _check(request, now=at + dt.timedelta(minutes=6))
    assert expired.value.code == "InvalidSignatureException"
    with pytest.raises(SignatureError) as unknown:
        verify(request, {}.get, service="service", region="us-east-1")
    assert unknown.value.code == "UnrecognizedClientException"
    with pytest.raises(SignatureError, match="correct service"):
        verify(request, {ACCESS_KEY: SECRET}.get, service="bedrock", region="us-east-1")
    with pytest.raises(SignatureError, match="valid region"):
        verify(request, {ACCESS_KEY: SECRET}.get, service="service", region="eu-west-1")
    unsigned = SignedRequest("GET", b"/", b"", [HOST, ("x-amz-date", DATE)], b"")
    with pytest.raises(SignatureError) as missing:
        _check(unsigned)
    assert missing.value.code == "MissingAuthenticationTokenException"
    tampered = _request("POST", b"/", b"", [], b"", good[-1])
    with pytest.raises(SignatureError):
        _check(tampered)  # GET's signature on a POST
    declared = SignedRequest(
        "GET",
        b"/",
        b"",
        [*request.headers, ("x-amz-content-sha256", "0" * 64)],
        b"",
    )
    with pytest.raises(SignatureError, match="x-amz-content-sha256"):
        _check(declared)
