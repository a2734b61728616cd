"""The HTTP gate's request check, on requests written as clients write them (tritonclient builds the binary ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from deploykit.serving.gate import BadRequest, InputLimit, check_infer_request

LIMITS = {"x": InputLimit("x", 8 * 3 * 4 * 4 * 4, "shape [8, 3, 4, 4] of float32 at --max-batch-size")}


def _binary_request(array: np.ndarray) -> tuple[bytes, int]:
    tensor = httpclient.InferInput("x", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
    return body, header_length


def test_requests_tritonclient_writes_pass():
    x = np.zeros((8, 3, 4, 4), np.float32)
    check_infer_request(*_binary_request(x), LIMITS)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
    assert header_length is None
    check_infer_request(body, None, LIMITS)


def test_a_batch_over_the_limit_is_refused_before_any_allocation():
    body = json.dumps({"inputs": [{"name": "x", "shape": [2**40, 3, 4, 4], "datatype": "FP32", "data": [0]}]})
    with pytest.raises(BadRequest, match=r"211,106,232,532,992 bytes.*1,536 bytes"):
        check_infer_request(body.encode(), None, LIMITS)
    body, header_length = _binary_request(np.zeros((9, 3, 4, 4), np.float32))  # one over --max-batch-size
    with pytest.raises(BadRequest, match="send a smaller batch"):
        check_infer_request(body, header_length, LIMITS)


def test_binary_sizes_must_add_up():
    body, header_length = _binary_request(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(BadRequest, match="binary part of the request is 380 bytes"):
        check_infer_request(body[:-4], header_length, LIMITS)
    with pytest.raises(BadRequest, match="does not fit a body"):
        check_infer_request(body, len(body) + 1, LIMITS)


@pytest.mark.parametrize("request_, says", [
    ({"inputs": [{"name": "x", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [[1.0] * 47, [2.0, 3.0]]}]}, "has 49"),
    ({"inputs": [{"name": "x", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [1.0] * 47}]}, "has 47"),
    ({"inputs": [{"name": "x", "shape": [1, 3.5, 4, 4], "datatype": "FP32", "data": [1.0]}]}, "integers >= 0"),
    ({"inputs": [{"name": "x", "shape": [1, True, 4, 4], "datatype": "FP32", "data": [1.0]}]}, "integers >= 0"),
    ({"inputs": [{"name": "x", "shape": [1, 3, 4, 4], "datatype": "FLOAT", "data": [1.0]}]}, "unknown datatype"),
    ({"inputs": [{"name": "x", "shape": [1, 3, 4, 4], "datatype": "FP32"}]}, "neither 'data'"),
    ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1.0]}]}, "no 'name'"),
    ({"inputs": "x"}, "'inputs' list"),
])
def test_malformed_requests_say_what_is_wrong(request_, says):
    with pytest.raises(BadRequest, match=says):
        check_infer_request(json.dumps(request_).encode(), None, LIMITS)


def test_deeply_nested_json_is_a_400_not_a_crash():
    # A client picks the nesting depth: 100,000 levels must not overflow the parser's stack.
    deep = "[" * 100_000 + "1" + "]" * 100_000
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + deep.encode() + b"}]}"
    with pytest.raises(BadRequest, match="nests deeper"):
        check_infer_request(body, None, LIMITS)
