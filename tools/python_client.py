#!/usr/bin/env python3
"""A small Python client of matformer-server, on Debian's python3-grpcio.

The stubs are generated at build time (CMake target matformer_python_stubs)
into <build>/proto/python; pass that directory as --stubs_dir:

  /usr/bin/python3 tools/python_client.py --stubs_dir build/proto/python \\
      generate --prompt "In the beginning" --stream --tier interactive
  /usr/bin/python3 tools/python_client.py --stubs_dir build/proto/python info

Every command prints one JSON object per response message on stdout (the
proto3 JSON mapping), so scripts can read it; errors go to stderr with the
gRPC status code, and the exit status is 1.
"""

import argparse
import importlib
import json
import sys


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stubs_dir", required=True, help="directory of the generated Python stubs")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--timeout", type=float, default=None, help="call deadline in seconds")
    parser.add_argument("--tls_ca", help="PEM CA certificate(s) of the server's certificate; turns TLS on")
    parser.add_argument("--tls_cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls_key", help="PEM private key of --tls_cert")
    parser.add_argument("--token_file", help="file holding a bearer token (sent as 'authorization: Bearer ...')")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_routing(command):
        command.add_argument("--prompt", required=True)
        command.add_argument("--tier", default="")
        command.add_argument("--spec", default="", help="pin a submodel, e.g. XL or S-S-M-M-L-XL")
        command.add_argument("--budget_ms", type=float, default=None, help="latency budget")

    generate = commands.add_parser("generate", help="generate text")
    add_routing(generate)
    generate.add_argument("--max_new_tokens", type=int, default=None)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable)")
    generate.add_argument("--stream", action="store_true", help="use GenerateStream")

    score = commands.add_parser("score", help="log-likelihood of a continuation")
    add_routing(score)
    score.add_argument("--continuation", required=True)

    commands.add_parser("info", help="model, submodels, tiers, caches")
    commands.add_parser("health", help="exit 0 when SERVING")
    tokenize = commands.add_parser("tokenize", help="text to ids, or ids to text")
    tokenize_input = tokenize.add_mutually_exclusive_group(required=True)
    tokenize_input.add_argument("--text")
    tokenize_input.add_argument("--ids", help="comma-separated token ids")
    return parser.parse_args()


def set_routing(request, args):
    if args.tier:
        request.tier = args.tier
    if args.spec:
        request.spec_name = args.spec
    if args.budget_ms is not None:
        request.latency_budget.FromNanoseconds(int(args.budget_ms * 1e6))


def main():
    args = parse_args()
    sys.path.insert(0, args.stubs_dir)
    import grpc  # Debian's python3-grpcio
    from google.protobuf import json_format

    pb = importlib.import_module("matformer.v1.matformer_pb2")
    pb_grpc = importlib.import_module("matformer.v1.matformer_pb2_grpc")
    health_pb = importlib.import_module("health_pb2")
    health_grpc = importlib.import_module("health_pb2_grpc")

    def emit(message):
        print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)), flush=True)

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    # Every call carries the deadline and, with --token_file, the bearer token (SECURITY.md).
    call = {"timeout": args.timeout}
    if args.token_file:
        call["metadata"] = [("authorization", "Bearer " + read(args.token_file).decode().strip())]
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.tls_ca),
            private_key=read(args.tls_key) if args.tls_key else None,
            certificate_chain=read(args.tls_cert) if args.tls_cert else None)
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        stub = pb_grpc.MatFormerStub(channel)
        try:
            if args.command == "generate":
                request = pb.GenerateRequest(text=args.prompt, stop_sequences=args.stop)
                request.sampling.temperature = args.temperature
                request.sampling.seed = args.seed
                if args.max_new_tokens is not None:
                    request.max_new_tokens = args.max_new_tokens
                set_routing(request, args)
                if args.stream:
                    for message in stub.GenerateStream(request, **call):
                        emit(message)
                else:
                    emit(stub.Generate(request, **call))
            elif args.command == "score":
                request = pb.ScoreRequest(text=args.prompt, continuation_text=args.continuation)
                set_routing(request, args)
                emit(stub.Score(request, **call))
            elif args.command == "info":
                emit(stub.GetModelInfo(pb.GetModelInfoRequest(), **call))
            elif args.command == "health":
                response = health_grpc.HealthStub(channel).Check(health_pb.HealthCheckRequest(), **call)
                emit(response)
                return 0 if response.status == health_pb.HealthCheckResponse.SERVING else 1
            elif args.command == "tokenize":
                if args.text is not None:
                    request = pb.TokenizeRequest(text=args.text)
                else:
                    request = pb.TokenizeRequest(token_ids=pb.TokenIds(ids=[int(i) for i in args.ids.split(",")]))
                emit(stub.Tokenize(request, **call))
        except grpc.RpcError as error:
            print(f"python_client: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
