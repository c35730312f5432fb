#!/usr/bin/env python3
"""A gRPC client written against Python's grpcio only, used by ztkit's tests as an
independent peer for the tonic example: it calls helloworld.Greeter/SayHello over TLS with a
client certificate and reports what happened in one line.

    python3 grpc_client.py --addr 127.0.0.1:50051 --ca ca.pem --cert client.crt --key client.key

Output, one line:

    OK <reply message>             the call succeeded (exit 0)
    CODE <status name> <details>   the call failed with that gRPC status (exit 1)
    SETUP-ERROR <error>            bad arguments or files, or grpcio is missing (exit 2)

The two messages are encoded by hand (field 1, a string, in both) so that neither protoc nor
the protobuf package is needed.
"""

import argparse
import sys


def encode_string_field(value: str) -> bytes:
    data = value.encode("utf-8")
    out = bytearray(b"\x0a")  # field 1, wire type 2 (length-delimited)
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            break
    return bytes(out) + data


def read_varint(buf: bytes, pos: int):
    shift = 0
    value = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_string_field(buf: bytes) -> str:
    """Returns field 1 of a message whose field 1 is a string; skips other fields."""
    pos = 0
    found = ""
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = read_varint(buf, pos)
            chunk = buf[pos : pos + length]
            pos += length
            if field == 1:
                found = chunk.decode("utf-8")
        elif wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="host:port of the server")
    parser.add_argument("--ca", required=True, help="PEM file with the CA of the server certificate")
    parser.add_argument("--cert", default="", help="client certificate chain (PEM); empty: none")
    parser.add_argument("--key", default="", help="client private key (PEM)")
    parser.add_argument("--servername", default="localhost", help="name to verify in the server certificate")
    parser.add_argument("--name", default="python", help="the name to greet")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    args = parser.parse_args()

    try:
        import grpc
    except ImportError as err:
        print(f"SETUP-ERROR grpcio is not installed (pip install -r tests/peers/requirements.txt): {err}")
        return 2

    try:
        with open(args.ca, "rb") as f:
            root = f.read()
        cert = key = None
        if args.cert:
            with open(args.cert, "rb") as f:
                cert = f.read()
            with open(args.key, "rb") as f:
                key = f.read()
    except OSError as err:
        print(f"SETUP-ERROR {err}")
        return 2

    creds = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", args.servername)]
    with grpc.secure_channel(args.addr, creds, options=options) as channel:
        say_hello = channel.unary_unary(
            "/helloworld.Greeter/SayHello",
            request_serializer=encode_string_field,
            response_deserializer=decode_string_field,
        )
        try:
            reply = say_hello(args.name, timeout=args.timeout)
        except grpc.RpcError as err:
            details = (err.details() or "").replace("\n", " ")
            print(f"CODE {err.code().name} {details}")
            return 1
    print(f"OK {reply}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
